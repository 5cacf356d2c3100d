"""CalcJobs and calcfunctions of tace-aiida."""

"""Parsers of tace-aiida's CalcJobs."""

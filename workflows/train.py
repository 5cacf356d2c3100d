"""``tace.train_base``: one ensemble member's training with AiiDA's restart machinery.

Handlers, highest priority first: settings or data the training refused (302) end the run (exit 310), since
they would be refused again; a job lost with its worker (400) and a job that reached its wall time
(420) continue from their last completed epoch (their ``restart`` output), or run again from the start
when they have none; a NaN loss (410) is retried from the start with a learning rate ten times lower.
Any other failure is retried once with the same inputs (``on_unhandled_failure = restart_once``).
A ``run_process`` step interrupted by a daemon crash keeps the job it made, or replaces it if it never ran
(:mod:`.resubmission`), instead of leaving it behind in the ``Created`` state.
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_
from tace_aiida.workflows.killing import ForcedKillReachesChildren
from tace_aiida.workflows.resubmission import KeepsJobsOfInterruptedSteps

from tace_aiida.calculations.train import TrainCalculation


class TrainBaseWorkChain(KeepsJobsOfInterruptedSteps, ForcedKillReachesChildren, BaseRestartWorkChain):
    """Run a ``tace.train`` CalcJob, restarting it when it fails."""

    _process_class = TrainCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(TrainCalculation, namespace="train")
        spec.inputs["on_unhandled_failure"].default = lambda: orm.Str("restart_once")
        spec.inputs["max_iterations"].default = lambda: orm.Int(3)
        spec.expose_outputs(TrainCalculation)
        spec.exit_code(310, "ERROR_INVALID_SETTINGS",
                       message="The training refused its settings or input, which running it again would not change: "
                               "{message}")
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
        )

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(TrainCalculation, "train"))

    def _continue(self, node: orm.CalcJobNode, why: str) -> ProcessHandlerReport:
        """Run the next job from the ``restart`` output of ``node`` if it has one, else from the start."""
        if "restart" in node.outputs:
            self.ctx.inputs.restart = node.outputs.restart
            self.report(f"{node.process_label}<{node.pk}> {why}: continuing from its restart file")
        else:
            self.report(f"{node.process_label}<{node.pk}> {why} before completing an epoch: running it again")
        return ProcessHandlerReport(do_break=True)

    @process_handler(priority=600, exit_codes=TrainCalculation.exit_codes.ERROR_JOB_LOST)
    def handle_job_lost(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Continue the training: its worker died, the training itself did not fail."""
        return self._continue(node, "was lost with its worker")

    @process_handler(priority=550, exit_codes=TrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME)
    def handle_out_of_walltime(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Continue the training in a new job with the same wall time."""
        return self._continue(node, "reached its wall time")

    @process_handler(priority=700, exit_codes=TrainCalculation.exit_codes.ERROR_INVALID_SETTINGS)
    def handle_invalid_settings(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Stop: the same settings or data would be refused again."""
        self.report(f"{node.process_label}<{node.pk}> refused its input: {node.exit_message}")
        return ProcessHandlerReport(do_break=True,
                                    exit_code=self.exit_codes.ERROR_INVALID_SETTINGS.format(message=node.exit_message))

    @process_handler(priority=500, exit_codes=TrainCalculation.exit_codes.ERROR_NAN_LOSS)
    def handle_nan_loss(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Retry from the start with a learning rate ten times lower (a restart file of other settings cannot be used)."""
        self.ctx.inputs.pop("restart", None)
        parameters = self.ctx.inputs.parameters.get_dict()
        parameters["lr"] = parameters.get("lr", 0.01) / 10
        self.ctx.inputs.parameters = orm.Dict(parameters)
        self.report(f"{node.process_label}<{node.pk}> loss became NaN: retrying with lr={parameters['lr']:g}")
        return ProcessHandlerReport(do_break=True)

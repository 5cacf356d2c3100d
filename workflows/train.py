"""``tace.train_base``: one ensemble member's training with AiiDA's restart machinery.

Handlers, highest priority first: a job lost with its worker (400) runs again as it was; a NaN loss
(410) is retried with a learning rate ten times lower. Any other failure is retried once with the
same inputs (``on_unhandled_failure = restart_once``).
"""

from __future__ import annotations

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from tace_aiida.calculations.train import TrainCalculation


class TrainBaseWorkChain(BaseRestartWorkChain):
    """Run a ``tace.train`` CalcJob, restarting it when it fails."""

    _process_class = TrainCalculation

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(TrainCalculation, namespace="train")
        spec.inputs["on_unhandled_failure"].default = lambda: orm.Str("restart_once")
        spec.inputs["max_iterations"].default = lambda: orm.Int(3)
        spec.expose_outputs(TrainCalculation)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
        )

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(TrainCalculation, "train"))

    @process_handler(priority=600, exit_codes=TrainCalculation.exit_codes.ERROR_JOB_LOST)
    def handle_job_lost(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Run the job again as it was: its worker died, the training itself did not fail."""
        self.report(f"{node.process_label}<{node.pk}> was lost with its worker: running it again")
        return ProcessHandlerReport(do_break=True)

    @process_handler(priority=500, exit_codes=TrainCalculation.exit_codes.ERROR_NAN_LOSS)
    def handle_nan_loss(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Retry with a learning rate ten times lower."""
        parameters = self.ctx.inputs.parameters.get_dict()
        parameters["lr"] = parameters.get("lr", 0.01) / 10
        self.ctx.inputs.parameters = orm.Dict(parameters)
        self.report(f"{node.process_label}<{node.pk}> loss became NaN: retrying with lr={parameters['lr']:g}")
        return ProcessHandlerReport(do_break=True)

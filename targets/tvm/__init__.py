"""The TVM target: ONNX -> Relax -> MetaSchedule-tuned shared library for the host CPU (apache-tvm 0.27).

Importable without TVM (the registry lists it); building it without the [tvm] extra names the extra.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import onnx
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from accelopt.errors import AccelError
from accelopt.targets import register_target
from accelopt.targets.base import Artifact, Finding, Target, TargetConfig
from accelopt.targets.tvm.env import host_cores, require_tvm
from accelopt.targets.tvm.remote import parse_tracker
from accelopt.targets.tvm.winograd import WinogradConfig


class TuningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trials: int = Field(64, ge=0, description="MetaSchedule trials in all; 0 reuses `database` without tuning")
    per_task: PositiveInt | None = Field(
        None, description="trials per fused kernel (default: trials spread evenly over the kernels)")
    time_s: PositiveFloat | None = Field(None, description="stop tuning after this many seconds, keeping the records")
    database: Path | None = Field(None, description="folder with a JSON tuning database to reuse and update")
    winograd: WinogradConfig | None = Field(
        default_factory=WinogradConfig,
        description="per-layer choice of direct, F(2x2,3x3) or F(4x4,3x3) by tuned latency; null: direct only")


class TvmTargetConfig(TargetConfig):
    device: Literal["cpu", "cuda"] = Field("cpu", description="cpu: kernels for the LLVM CPU below; cuda: an NVIDIA "
                                                              "GPU (DLight schedules untuned, MetaSchedule tuned)")
    arch: str | None = Field(None, description="CUDA arch (sm_80, sm_90...); default: GPU 0's")
    mcpu: str | None = Field(None, description="LLVM CPU name (znver4, skylake-avx512...); default: this host's")
    num_cores: PositiveInt | None = Field(None, description="cores the kernels parallelize over; default: threads")
    threads: PositiveInt | None = Field(None, description="TVM_NUM_THREADS for tuning and running; default: all cores")
    tuning: TuningConfig | None = Field(None, description="MetaSchedule budget; null builds untuned (slow on CPU)")
    int8: Literal["auto", "on", "off"] = Field(
        "auto", description="QDQ convs/matmuls as int8 kernels (VNNI-tensorizable): auto = on AVX-512 VNNI targets "
                            "only (on AVX2 they measured slower than dequantize + float)")
    tracker: str | None = Field(None, description="HOST:PORT of a TVM RPC tracker: tune and run on the devices "
                                                  "registered there under `key` instead of this host")
    key: str | None = Field(None, description="the device key servers registered with at the tracker")

    @model_validator(mode="after")
    def _tracker_and_key(self):
        if (self.tracker is None) != (self.key is None):
            raise ValueError("tracker and key go together: give both or neither")
        if self.tracker is not None:
            parse_tracker(self.tracker)
        return self


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@register_target
class TvmTarget(Target):
    name = "tvm"
    summary = "Apache TVM 0.27 for the host CPU or a CUDA GPU: Relax import, MetaSchedule tuning, a model.so (needs [tvm])"
    Config = TvmTargetConfig
    config: TvmTargetConfig

    def __init__(self, config: TvmTargetConfig | None = None):
        require_tvm()
        super().__init__(config)
        self.messages: list[str] = []  # what lowering said: the artifact's meta, hence the report

    def _log(self, message: str) -> None:
        self.messages.append(message)
        if self.events is None:  # called outside the pipeline (API, benchmarks)
            _stderr(message)
        else:
            self.emit("log", step=f"target {self.name}", message=message)

    def _progress(self, done: int, total: int, text: str) -> None:
        if self.events is None:
            _stderr(text)
        else:
            self.emit("target_progress", done=done, total=total, description=text)

    @property
    def threads(self) -> int:
        return self.config.threads or host_cores()

    def tvm_target(self) -> dict[str, Any]:
        """The JSON-dict target (notes §1): the host CPU (mcpu detected unless given), or a CUDA GPU with the
        host CPU for the code around its kernels."""
        from accelopt.targets.tvm.env import cuda_arch, host_mcpu, import_tvm

        import_tvm()
        host = {"kind": "llvm", "mcpu": self.config.mcpu or host_mcpu(),
                "num-cores": self.config.num_cores or self.threads}
        if self.config.device == "cpu":
            return host
        return {"kind": "cuda", "arch": self.config.arch or cuda_arch(), "host": host}

    def check(self, model: onnx.ModelProto) -> list[Finding]:
        from accelopt.targets.tvm.check import check

        tuning = self.config.tuning is not None and self.config.tuning.trials > 0
        return check(model, tuning, (self.config.tracker, self.config.key) if self.config.tracker else None,
                     self.config.device == "cuda" and self.config.arch is None)

    def lower(self, model: onnx.ModelProto, out_dir: Path) -> Artifact:
        from accelopt.targets.tvm.lower import lower

        target = self.tvm_target()
        detected = [] if self.config.mcpu else [f"mcpu {target.get('host', target)['mcpu']}"]
        detected += [f"arch {target['arch']}"] if self.config.device == "cuda" and not self.config.arch else []
        detected += [] if self.config.threads else [f"threads {self.threads}"]
        self._log(f"tvm: target {target}" + (f" (detected {', '.join(detected)})" if detected else ""))
        tracker = (self.config.tracker, self.config.key) if self.config.tracker else None
        artifact = lower(model, Path(out_dir), target, self.threads, self.config.tuning, self._log, tracker,
                         self._progress, self.config.int8)
        artifact.meta["log"] = self.messages
        return artifact

    def runner(self, artifact: Artifact, threads: int | None = None):
        if self.config.tracker:
            from accelopt.targets.tvm.remote import RemoteTvmRunner

            return RemoteTvmRunner(artifact.path, self.config.tracker, self.config.key)
        from accelopt.targets.tvm.env import import_tvm
        from accelopt.targets.tvm.runner import TvmRunner

        if self.config.device == "cuda" and not import_tvm().cuda(0).exist:
            return None  # built for a GPU this machine does not have: the pipeline says it was not run
        return TvmRunner(artifact.path, threads=threads if threads is not None else self.config.threads)

    def capabilities(self) -> dict[str, Any]:
        try:
            target = self.tvm_target()
        except AccelError as e:  # a GPU target with nothing to detect its arch from
            target = {"error": str(e)}
        return {"layout": "NCHW", "target": target, "threads": self.threads}

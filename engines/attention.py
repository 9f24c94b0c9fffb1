"""Was attention fused? Two independent looks, both required to pass.

1. Network (after parsing, before the build): the ONNX parser maps each opset-23 ``Attention`` node to one
   IAttention, i.e. an ATTENTION_INPUT + ATTENTION_OUTPUT layer pair. The count must equal the number of
   attention ops of the model (encoder: n_audio_layer; decoder: 2 x n_text_layer, self + cross).
   ``decomposable`` is left False, so the builder must fuse each IAttention or fail.
2. Engine (after the build): the per-layer description TensorRT writes with ProfilingVerbosity.DETAILED --
   from IEngineInspector when an engine can be deserialized here (needs a GPU), otherwise from the
   "Layers:" dump the builder logs at VERBOSE -- must show, for every attention node, a fused multi-head
   attention kernel (``_gemm_mha_v2``, ``fmha``, flash ...) whose metadata names that node.

The MatMul/Softmax fallback graph (export attention="matmul") has no IAttention, so look 1 fails even where
TensorRT's own pattern matcher fuses MatMul-Softmax-MatMul into an MHA kernel (it does for the tiny.en
encoder); such pattern fusions are reported as ``pattern_mha_fusions`` but do not make the check pass.
Everything here except :func:`network_attention` is pure Python over text/JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from whisper_export.backends.tensorrt.trt_api import trt

# kernel/layer names of fused attention in TensorRT and TensorRT-RTX engine dumps
FUSED_KERNEL = re.compile(r"(?i)(mha|fmha|flash|attention|_attn)")
ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
# one layer of the builder's "Layers:" dump (LayerInformationFormat.ONELINE)
LOG_LAYER = re.compile(
    r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), .*?TacticName: (?P<tactic>[^,]*), "
    r"StreamId: [^,]*, (?:EventId: [^,]*, )?Metadata:\s?(?P<meta>.*)$"
)
SKIP_TYPES = {"shape_call", "signal", "wait"}


class FusedAttentionError(RuntimeError):
    """The engine (or network) does not run every attention op as a fused attention kernel."""


@dataclass(frozen=True)
class EngineLayer:
    name: str
    type: str
    tactic: str
    onnx_nodes: tuple[str, ...]

    @property
    def is_fused_attention(self) -> bool:
        return self.type not in SKIP_TYPES and bool(FUSED_KERNEL.search(self.name) or FUSED_KERNEL.search(self.tactic))


@dataclass(frozen=True)
class NetworkAttention:
    """One IAttention of the parsed network."""

    name: str  # the ONNX node name
    decomposable: bool
    has_mask: bool


@dataclass
class FusedAttentionReport:
    graph: str
    expected: int  # attention ops of the model
    network_attention: int  # IAttention layers in the parsed network
    attention_nodes: list[str]
    decomposable: int  # IAttention with decomposition allowed (should be 0)
    engine_fused: int | None  # attention nodes with a fused kernel in the engine; None: not inspected yet
    engine_source: str | None  # "engine_inspector" | "builder_log"
    fused_kernels: list[str] = field(default_factory=list)  # distinct tactic names
    pattern_mha_fusions: int = 0  # fused MHA kernels over non-IAttention ops (MatMul-Softmax patterns)
    unfused_nodes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and self.engine_fused == self.expected

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        if self.passed:
            return f"{self.graph}: {self.engine_fused}/{self.expected} attention ops fused ({self.engine_source})"
        return f"{self.graph}: attention NOT fused: " + "; ".join(self.problems or ["not inspected"])


def expected_attention_ops(graph: str, n_audio_layer: int, n_text_layer: int) -> int:
    if graph == "encoder":
        return n_audio_layer
    if graph == "decoder":
        return 2 * n_text_layer
    raise ValueError(f"graph: received {graph!r}, expected 'encoder' or 'decoder'")


def network_attention(network: trt.INetworkDefinition) -> list[NetworkAttention]:
    """The IAttention layers of a parsed network (one per ATTENTION_OUTPUT boundary layer)."""
    found = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.ATTENTION_OUTPUT:
            layer.__class__ = trt.IAttentionOutputLayer  # the bindings hand out the ILayer base class
            assert isinstance(layer, trt.IAttentionOutputLayer)
            attention = layer.attention
            found.append(NetworkAttention(attention.name, bool(attention.decomposable), attention.mask is not None))
    return found


def check_network(graph: str, expected: int, attentions: Sequence[NetworkAttention]) -> FusedAttentionReport:
    """Look 1 (see the module docstring); problems are recorded, not raised."""
    report = FusedAttentionReport(
        graph=graph,
        expected=expected,
        network_attention=len(attentions),
        attention_nodes=[a.name for a in attentions],
        decomposable=sum(a.decomposable for a in attentions),
        engine_fused=None,
        engine_source=None,
    )
    if len(attentions) != expected:
        report.problems.append(
            f"the parsed network has {len(attentions)} IAttention layers, expected {expected} (one per attention "
            "op); export with the opset-23 Attention operator (ExportOptions(attention='onnx')), not the MatMul "
            "fallback"
        )
    if report.decomposable:
        report.problems.append(f"{report.decomposable} IAttention layers allow decomposition into primitive ops")
    return report


def layers_from_builder_log(text: str) -> list[EngineLayer]:
    """Parse the "Layers:" dump that the builder logs at VERBOSE with ProfilingVerbosity.DETAILED."""
    layers = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and "] " in line:  # a severity prefix written by our logger
            line = line.split("] ", 1)[1]
        m = LOG_LAYER.match(line)
        if m:
            meta = m.group("meta")
            layers.append(EngineLayer(m.group("name"), m.group("type"), m.group("tactic").strip(),
                                      tuple(ONNX_LAYER.findall(meta))))
    return layers


def layers_from_inspector_json(text: str) -> list[EngineLayer]:
    """Parse IEngineInspector.get_engine_information(LayerInformationFormat.JSON) at DETAILED verbosity."""
    data = json.loads(text)
    layers = []
    for entry in data.get("Layers", []):
        if isinstance(entry, str):  # verbosity below DETAILED: names only
            layers.append(EngineLayer(entry, "", "", ()))
            continue
        meta = str(entry.get("Metadata", ""))
        layers.append(EngineLayer(str(entry.get("Name", "")), str(entry.get("LayerType", "")),
                                  str(entry.get("TacticName", "")), tuple(ONNX_LAYER.findall(meta))))
    return layers


def check_engine(report: FusedAttentionReport, layers: Iterable[EngineLayer], source: str) -> FusedAttentionReport:
    """Look 2: every attention node of the network must appear in a fused attention kernel's metadata."""
    layers = list(layers)
    nodes = set(report.attention_nodes)
    fused = [layer for layer in layers if layer.is_fused_attention]
    covered = {n for layer in fused for n in layer.onnx_nodes if n in nodes}
    report.engine_source = source
    report.engine_fused = len(covered)
    report.fused_kernels = sorted({layer.tactic or layer.name for layer in fused if set(layer.onnx_nodes) & nodes})
    report.pattern_mha_fusions = sum(1 for layer in fused if not set(layer.onnx_nodes) & nodes)
    report.unfused_nodes = sorted(nodes - covered)
    if not layers:
        report.problems.append(f"no layer information in the {source} (needs ProfilingVerbosity.DETAILED)")
    elif report.unfused_nodes:
        report.problems.append(
            f"{len(report.unfused_nodes)} attention ops have no fused attention kernel in the engine: "
            f"{', '.join(report.unfused_nodes[:8])}"
        )
    if report.engine_fused != report.expected and not report.problems:
        report.problems.append(f"{report.engine_fused} fused attention ops in the engine, expected {report.expected}")
    return report


def require_fused(report: FusedAttentionReport) -> None:
    if not report.passed:
        raise FusedAttentionError(report.summary())

"""Reading a user's trained network from a file: the three kinds ``--model-file`` takes.

- ``torch.export``: a program saved by ``torch.export.save`` (``.pt2``), read with
  ``torch.export.load``. Its graph is ATen operations over named parameters, so the last
  linear layer is found in the graph and ``torch.func`` differentiates it.
- ``torchscript``: a module saved by ``torch.jit.save`` (deprecated in torch 2.14, still
  read). ``torch.func`` cannot run through the TorchScript interpreter, so only the last
  linear layer can be taken influence over; it is found in the inlined TorchScript graph.
- ``state dict``: a mapping of parameter names to tensors saved by ``torch.save``, loaded
  (``weights_only``) into the ``nn.Module`` that ``--model-factory MODULE:FUNCTION``
  builds. The last linear layer is the last ``nn.Linear`` the forward pass calls.

Each kind is a :class:`Network`: the raw forward pass, the embeddings that enter the last
linear layer with that layer's weight and bias, and, where ``torch.func`` applies, the
forward pass as a function of the parameters. :mod:`auditor.models.user` turns a network
into a :class:`~auditor.models.ModelTask`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
import warnings
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from auditor.errors import ConfigError, DataError

#: The kinds of file ``--model-file`` takes (:func:`file_kind`).
KINDS = ("torch.export", "torchscript", "state dict")
#: Rows per forward pass when a whole dataset goes through the network.
CHUNK = 1024
#: Operations that only reshape the last linear layer's output on its way to the model's
#: output (``fc(h).squeeze(-1)``): ATen names in an exported graph, TorchScript kinds.
RESHAPES = frozenset({"view", "reshape", "_unsafe_view", "squeeze", "unsqueeze", "flatten",
                      "clone", "alias", "contiguous"})  # fmt: skip

#: Saying what --params all needs, for the kinds that cannot give it.
USE_PARAMS_LAST = "use --params last (influence over the last linear layer)"

LastLayer = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class NoLastLayer(ConfigError):
    """The model's output is not made by a linear layer (up to a reshape), which
    ``--params last`` and ``--fit last`` need; the message says what makes it."""


class Network(ABC):
    """A trained network read from a file, on one device and in one dtype.

    Attributes:
        kind: One of :data:`KINDS`.
        fixed_batch: The one batch size the network takes (a program exported without a
            dynamic batch dimension), else ``None``.
        input_shape: The shape of one input the network declares, where it does (an
            exported program), else ``None``.
    """

    kind: str
    fixed_batch: int | None = None
    input_shape: tuple[int | None, ...] | None = None

    @abstractmethod
    def _forward(self, x: torch.Tensor) -> Any:
        """The module's output for the batch ``x`` ``(b, *shape)``, as it returns it."""

    @abstractmethod
    def _last_layer(self, x: torch.Tensor) -> LastLayer:
        """The input ``(b, h)`` of the layer that makes the output, with its weight
        ``(k, h)`` and bias ``(k,)`` (or ``None``), for the batch ``x``."""

    def parameters(self) -> dict[str, torch.Tensor]:
        """The trained parameters by name, as ``torch.func`` takes them (``--params all``)."""
        raise ConfigError(
            f"--params all differentiates the model with torch.func, which cannot run a "
            f"{self.kind} module; {USE_PARAMS_LAST}, or save the model with torch.export "
            "(.pt2) or as a state dict with --model-factory"
        )

    def functional(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
        """The module's output for ``x`` under the parameters ``params`` (differentiable
        in them, also under ``vmap``)."""
        raise NotImplementedError  # parameters() refuses first

    def last_layer_names(self) -> tuple[str, str | None]:
        """The names (in :meth:`parameters`) of the last linear layer's weight and bias."""
        raise NotImplementedError  # parameters() refuses first

    def taped(
        self, params: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> tuple[Any, list[SeenLayer]] | None:
        """:meth:`functional`'s output with every ``nn.Linear``/``nn.Conv2d`` call it made,
        in order, or ``None`` where the layers cannot be seen (a compiled program)."""
        return None

    # --- the public, batched forms ---------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The output ``(n, ...)`` for ``x`` ``(n, *shape)``, without gradients, in chunks
        (padded to :attr:`fixed_batch` where the network takes one batch size)."""
        with torch.no_grad():
            return torch.cat([one_tensor(self._forward(b)) for b in self._batches(x)])[: x.shape[0]]

    def last_layer(self, x: torch.Tensor) -> LastLayer:
        """:meth:`_last_layer` over ``x`` ``(n, *shape)`` in chunks, without gradients: the
        embeddings ``(n, h)`` and the layer's weight and bias."""
        parts: list[torch.Tensor] = []
        weight: torch.Tensor | None = None
        bias: torch.Tensor | None = None
        with torch.no_grad():
            for b in self._batches(x):
                embeddings, weight, bias = self._last_layer(b)
                parts.append(embeddings.reshape(embeddings.shape[0], -1))
        assert weight is not None, "no batch went through the network"
        return torch.cat(parts)[: x.shape[0]], weight.detach(), _detached(bias)

    def _batches(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        size = self.fixed_batch or CHUNK
        for start in range(0, x.shape[0], size):
            batch = x[start : start + size]
            if self.fixed_batch is not None and batch.shape[0] < size:  # pad with the last row
                pad = batch[-1:].expand(size - batch.shape[0], *batch.shape[1:])
                batch = torch.cat([batch, pad])
            yield batch


def one_tensor(out: Any) -> torch.Tensor:
    """The network's output if it is one tensor (or a 1-tuple of one)."""
    if isinstance(out, tuple | list) and len(out) == 1:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        what = f"{len(out)} values" if isinstance(out, tuple | list) else type(out).__name__
        raise DataError(
            f"the model returns {what}; auditor needs one tensor (logits, or the regression "
            "values) per point"
        )
    return out


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


# --- reading the file ----------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """The SHA-256 of the file's bytes (hex): a resumed run must read the same model."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_kind(path: Path) -> str:
    """Which of :data:`KINDS` the file ``path`` holds, from its archive's members (all
    three are zip archives; a state dict saved in torch's legacy format is a pickle)."""
    if not path.exists():
        raise DataError(f"{path}: no such model file")
    if not path.is_file():
        raise DataError(f"{path}: not a file; --model-file takes a model file")
    if not zipfile.is_zipfile(path):
        return "state dict"  # torch.load says whether it is one
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable model file ({exc})") from None
    leaves = {name.split("/", 1)[-1] for name in names}
    if "archive_format" in leaves or any(n.startswith("models/") for n in leaves):
        return "torch.export"
    if "constants.pkl" in leaves or any(n.startswith("code/") for n in leaves):
        return "torchscript"
    if "data.pkl" in leaves:
        return "state dict"
    raise DataError(
        f"{path}: a zip archive, but not a model: --model-file takes a torch.export program "
        "(.pt2), a TorchScript file, or a state dict saved with torch.save"
    )


def read_network(
    path: Path, factory: str | None, device: torch.device, dtype: torch.dtype
) -> Network:
    """The network in the file ``path`` (a state dict is loaded into the module that
    ``factory`` builds) on ``device``, in ``dtype``, in eval mode.

    Raises:
        DataError: No such file, or not a model (or a state dict that does not fit).
        ConfigError: ``factory`` missing for a state dict, given for another kind, or not
            importable, not callable, or not building an ``nn.Module``.
    """
    kind = file_kind(path)
    if kind != "state dict" and factory is not None:
        raise ConfigError(
            f"--model-factory builds the module of a state dict; {path} is a {kind} file, "
            "which holds its module: drop --model-factory"
        )
    if kind == "torch.export":
        return ExportedNetwork(path, device, dtype)
    if kind == "torchscript":
        return ScriptedNetwork(path, device, dtype)
    state = _read_state_dict(path)
    if factory is None:
        raise ConfigError(
            f"{path} is a state dict: give --model-factory MODULE:FUNCTION, a function "
            "that builds its nn.Module"
        )
    module = build_module(factory)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # missing, unexpected or mis-shaped keys
        raise DataError(
            f"{path}: the state dict does not fit the module {factory} builds: {one_line(str(exc))}"
        ) from None
    return ModuleNetwork(module, device, dtype)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict ``torch.save`` wrote (also under a checkpoint's
    ``state_dict`` or ``model_state_dict`` key), read with ``weights_only``."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, a corrupt archive, a truncated file...
        raise DataError(
            f"{path}: not a model file (a torch.export program, a TorchScript file, or a "
            f"state dict saved with torch.save that loads with weights_only): "
            f"{one_line(str(exc))}"
        ) from None
    for key in ("state_dict", "model_state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if (
        not isinstance(loaded, Mapping)
        or not loaded
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())
    ):
        raise DataError(
            f"{path}: holds a {type(loaded).__name__}, not a state dict (parameter names "
            "to tensors, as model.state_dict() gives)"
        )
    return dict(loaded)


def build_module(factory: str) -> nn.Module:
    """Import ``MODULE:FUNCTION`` (the current folder first on the import path, as for
    ``python -m``) and call it for the ``nn.Module``."""
    module_name, _, attribute = factory.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"--model-factory: expected MODULE:FUNCTION, got {factory!r}")
    try:
        with _current_folder_importable():
            found: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises as it loads
        raise ConfigError(
            f"--model-factory {factory}: cannot import {module_name} "
            f"({type(exc).__name__}: {one_line(str(exc))})"
        ) from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"--model-factory {factory}: {module_name} has no {attribute}")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(f"--model-factory {factory}: {attribute} is not callable")
    try:
        built = found()
    except Exception as exc:
        raise ConfigError(
            f"--model-factory {factory}: calling it raised {type(exc).__name__}: "
            f"{one_line(str(exc))}"
        ) from None
    if not isinstance(built, nn.Module):
        raise ConfigError(
            f"--model-factory {factory}: returned a {type(built).__name__}, not a torch.nn.Module"
        )
    return built


@contextlib.contextmanager
def _current_folder_importable() -> Iterator[None]:
    """The current folder on ``sys.path`` while importing (the ``auditor`` script, unlike
    ``python -m auditor``, does not put it there)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def one_line(text: str, most: int = 400) -> str:
    """``text`` on one line, cut at ``most`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= most else flat[: most - 3] + "..."


# --- the three kinds -----------------------------------------------------------------------


@dataclass
class SeenLayer:
    """A layer call seen by a forward hook: the module's name, the module, its input and
    its output (in the autograd graph)."""

    name: str
    module: nn.Linear | nn.Conv2d
    inputs: torch.Tensor
    outputs: torch.Tensor


class ModuleNetwork(Network):
    """An ``nn.Module`` built by a factory and loaded from a state dict. The last linear
    layer is the last ``nn.Linear`` its forward pass calls, seen by forward hooks."""

    kind = "state dict"

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.module = module.to(device=device, dtype=dtype).eval()
        self._last: nn.Linear | None = None

    def _forward(self, x: torch.Tensor) -> Any:
        return self.module(x)

    def _last_layer(self, x: torch.Tensor) -> LastLayer:
        seen: list[tuple[nn.Linear, torch.Tensor]] = []

        def record(layer: nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
            assert isinstance(layer, nn.Linear)
            seen.append((layer, inputs[0]))

        hooks = [
            m.register_forward_hook(record)
            for m in self.module.modules()
            if isinstance(m, nn.Linear)
        ]
        try:
            self.module(x)
        finally:
            for hook in hooks:
                hook.remove()
        if not seen:
            raise NoLastLayer("the model's forward pass calls no nn.Linear layer")
        layer, embeddings = seen[-1]
        self._last = layer
        return embeddings, layer.weight, layer.bias

    def parameters(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.module.named_parameters()}

    def functional(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
        return functional_call(self.module, dict(params), (x,))

    def taped(
        self, params: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> tuple[Any, list[SeenLayer]]:
        seen: list[SeenLayer] = []
        names = {m: n for n, m in self.module.named_modules()}

        def record(layer: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            assert isinstance(layer, nn.Linear | nn.Conv2d)
            seen.append(SeenLayer(names[layer], layer, inputs[0], output))

        hooks = [
            m.register_forward_hook(record)
            for m in self.module.modules()
            if isinstance(m, nn.Linear | nn.Conv2d)
        ]
        try:
            out = functional_call(self.module, dict(params), (x,))
        finally:
            for hook in hooks:
                hook.remove()
        return out, seen

    def last_layer_names(self) -> tuple[str, str | None]:
        if self._last is None:
            raise RuntimeError("call last_layer first")
        name = next(n for n, m in self.module.named_modules() if m is self._last)
        prefix = f"{name}." if name else ""
        return f"{prefix}weight", None if self._last.bias is None else f"{prefix}bias"


class ExportedNetwork(Network):
    """A ``torch.export`` program. Its graph's output must come from a linear operation
    (``aten.linear``, or ``aten.addmm`` of a transposed weight) through reshapes only for
    ``--params last``; a copy of the graph that returns that operation's inputs gives the
    embeddings."""

    kind = "torch.export"

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype) -> None:
        try:
            program = torch.export.load(path)
        except Exception as exc:
            raise DataError(
                f"{path}: looks like a torch.export program but cannot be loaded "
                f"({type(exc).__name__}: {one_line(str(exc))})"
            ) from None
        inputs = [
            n
            for n in program.graph.nodes
            if n.op == "placeholder" and n.name in set(program.graph_signature.user_inputs)
        ]
        if len(inputs) != 1:
            raise DataError(
                f"{path}: the program takes {len(inputs)} inputs; auditor gives it one "
                "tensor of features"
            )
        value = inputs[0].meta.get("val")
        if isinstance(value, torch.Tensor):
            dims = tuple(d if isinstance(d, int) else None for d in value.shape)
            self.input_shape = dims[1:]
            self.fixed_batch = dims[0] if dims else None
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        module = program.module()
        self.module: torch.fx.GraphModule = module.to(dtype)
        self._head: torch.fx.GraphModule | None = None
        self._names: tuple[str, str | None] | None = None

    def _forward(self, x: torch.Tensor) -> Any:
        return self.module(x)

    def _last_layer(self, x: torch.Tensor) -> LastLayer:
        if self._head is None:
            self._head = self._truncated()
        out = self._head(x)
        embeddings, weight, bias = out
        return embeddings, weight, bias

    def _truncated(self) -> torch.fx.GraphModule:
        """A copy of the graph that returns the last linear operation's input, weight
        and bias instead of the output."""
        graph = self.module.graph
        output = next(n for n in graph.nodes if n.op == "output")
        results = output.args[0]
        node = results[0] if isinstance(results, tuple | list) and len(results) == 1 else results
        if not isinstance(node, torch.fx.Node):
            raise DataError("the model returns several values; auditor needs one tensor")
        while _aten_name(node) in RESHAPES:
            node = node.args[0]
        name = _aten_name(node)
        if name == "linear":
            embeddings, weight = node.args[0], node.args[1]
            bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        elif name == "addmm" and _aten_name(node.args[2]) in ("t", "permute", "transpose"):
            bias, embeddings, weight = node.args[0], node.args[1], node.args[2].args[0]
        else:
            what = f"aten.{name}" if name else f"a {node.op} node"
            raise NoLastLayer(
                f"the model's output comes from {what}, not straight from a linear layer (an "
                "activation or softmax after it?)"
            )
        self._names = (_attribute(weight), _attribute(bias) if bias is not None else None)
        copied = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        copied.graph_copy(graph, env)
        copied.output(
            (env[embeddings], env[weight], env[bias] if isinstance(bias, torch.fx.Node) else None)
        )
        head = torch.fx.GraphModule(self.module, copied)
        head.graph.eliminate_dead_code()
        head.recompile()
        return head

    def parameters(self) -> dict[str, torch.Tensor]:
        if self.fixed_batch is not None:
            raise ConfigError(
                f"--params all differentiates the model one point at a time, and the program "
                f"was exported for batches of exactly {self.fixed_batch} points: export it "
                "with a dynamic batch dimension (dynamic_shapes={'x': {0: "
                f"torch.export.Dim('batch')}}), or {USE_PARAMS_LAST}"
            )
        return {name: p.detach() for name, p in self.module.named_parameters()}

    def functional(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
        return functional_call(self.module, dict(params), (x,))

    def last_layer_names(self) -> tuple[str, str | None]:
        if self._head is None:
            self._head = self._truncated()
        assert self._names is not None
        weight, bias = self._names
        if not weight:
            raise ConfigError(
                "--fit last refits the last linear layer, whose weight is not a parameter "
                "of the program; use --fit none, or --params last"
            )
        return weight, bias or None


def _aten_name(node: Any) -> str:
    """``linear`` for a node calling ``aten.linear.default``, else ``""``."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return ""
    packet = getattr(node.target, "overloadpacket", None)
    return str(getattr(packet, "__name__", ""))


def _attribute(node: Any) -> str:
    """The parameter a ``get_attr`` node reads (``fc.weight``), else ``""``."""
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        return str(node.target)
    return ""


class ScriptedNetwork(Network):
    """A TorchScript module. Its inlined graph's output must come from ``aten::linear``
    through reshapes only for ``--params last``; a function compiled from a copy of the
    (frozen) graph that returns that operation's inputs gives the embeddings."""

    kind = "torchscript"

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype) -> None:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* deprecated")
                module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        except Exception as exc:
            raise DataError(
                f"{path}: looks like a TorchScript file but cannot be loaded "
                f"({type(exc).__name__}: {one_line(str(exc))})"
            ) from None
        self.module: torch.jit.ScriptModule = module.to(dtype).eval()
        self._head: tuple[Callable[..., Any], Any] | None = None

    def _forward(self, x: torch.Tensor) -> Any:
        return self.module(x)

    def _last_layer(self, x: torch.Tensor) -> LastLayer:
        if self._head is None:
            self._head = self._truncated()
        function, frozen = self._head
        embeddings, weight, bias = function(frozen, x)
        return embeddings, weight, bias

    def _truncated(self) -> tuple[Callable[..., Any], Any]:
        """A function of (a frozen copy of the module, x) that returns the last linear
        operation's input, weight and bias, and that copy. Freezing (parameters kept)
        turns the module's other attributes into constants, so that branches on them
        (``if self.squeeze:``) fold away and the layer that makes the output shows."""
        frozen = torch._C._freeze_module(self.module._c, [], True, True)
        graph = frozen._get_method("forward").graph.copy()
        torch._C._jit_pass_inline(graph)
        outputs = list(graph.outputs())
        node = outputs[0].node() if len(outputs) == 1 else None
        while node is not None and node.kind().removeprefix("aten::") in RESHAPES:
            node = next(node.inputs()).node()
        if node is None or node.kind() != "aten::linear":
            what = "several values" if node is None else node.kind()
            raise NoLastLayer(
                f"the model's output comes from {what}, not straight from a linear layer (an "
                "activation or softmax after it?)"
            )
        embeddings, weight, bias = list(node.inputs())[:3]
        graph.eraseOutput(0)  # a method returns one value: the three as one tuple
        values = [embeddings, weight, bias]
        group = graph.create("prim::TupleConstruct", values, 1)
        group.output().setType(torch._C.TupleType([v.type() for v in values]))
        group.insertBefore(graph.return_node())
        graph.registerOutput(group.output())
        torch._C._jit_pass_dce(graph)
        function: Callable[..., Any] = torch._C._create_function_from_graph(
            "auditor_last_layer", graph
        )
        return function, frozen

"""Optimizer: torch.optim's interface, with the arithmetic done once over the flat buffer."""

from __future__ import annotations

import copy
import numbers
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..autodiff import no_grad
from ..nn import Module, Parameter, flatten_parameters


def _is(value: float | np.ndarray, scalar: float) -> bool:
    """Whether a hyperparameter is the Python float ``scalar`` (so its pass can be skipped)."""
    return isinstance(value, float) and value == scalar


def _scale_(arr: np.ndarray, *factors: float | np.ndarray) -> np.ndarray:
    """arr *= the product of ``factors``, in place: one pass for all the Python floats
    together, one for each vector (a per-group hyperparameter)."""
    scalar = 1.0
    for f in factors:
        if isinstance(f, float):
            scalar *= f
        else:
            arr *= f
    if scalar != 1.0:
        arr *= scalar
    return arr


def _invalid(bad: bool, message: str) -> None:
    if bad:
        raise ValueError(message)


# Hyperparameters that must be non-negative numbers, with torch.optim's messages.
_NON_NEGATIVE = {
    "lr": "Invalid learning rate", "eps": "Invalid epsilon value", "momentum": "Invalid momentum value",
    "weight_decay": "Invalid weight_decay value", "lr_decay": "Invalid lr_decay value",
    "initial_accumulator_value": "Invalid initial_accumulator_value value", "alpha": "Invalid alpha value",
}


class Optimizer:
    """Base class with torch.optim's names: ``param_groups``, ``state``, ``step()``,
    ``zero_grad()``, ``state_dict()`` and ``load_state_dict()``.

    ``params`` is an iterable of Parameters, or of dicts ``{"params": [...], "lr": ...}``
    (param groups); keys a group leaves out take the values of ``defaults``. The constructor
    packs all parameters into one flat buffer (``self.flat``, see ``distbp.nn.flatten_parameters``)
    or reuses the buffer that already holds exactly them.

    Deliberate deviations from torch, all for invariant 4 of docs/ARCHITECTURE.md (the number of numpy calls
    per step does not grow with the number of layers):

    * State is kept per flat buffer, not per parameter: ``state["exp_avg"]`` is one array in
      flat-buffer order and ``state["step"]`` one int, and ``state_dict()["state"]`` maps state
      names to copies of those arrays (plus the step) instead of parameter ids to dicts.
    * A hyperparameter that differs between groups becomes a vector over the flat buffer,
      rebuilt only when the group values change. Boolean options (``maximize``, ``nesterov``,
      ``amsgrad``, ``centered``) choose the kernel, so they must agree across groups.
    * ``state["step"]`` counts ``step()`` calls; torch's per-parameter step counts (a skipped
      parameter does not advance) are kept too, and only saved once they differ.
    * An optimizer over part of a model keeps state arrays the size of the whole flat buffer
      its parameters live in (zeros outside them): the kernel then runs on views of one buffer.

    Blocking. ``step()`` runs the kernel once per block of ``block_size`` consecutive elements
    of the flat buffer (the last block may be shorter), on views of that block of every array.
    A kernel is about a dozen elementwise passes over flat-sized arrays (parameters, gradient,
    one to three state arrays, scratch): over the whole buffer, each pass streams all of them
    through main memory again; over a block of 64K float32 elements (256 KB per array, about
    1.3 MB for Adam's five) they stay in the core's cache from the first operation to the
    last, and the scratch arrays, which only ever hold one block, never leave it. Measured
    for Adam on 1.86M float32 parameters (bench/step.py's MLP), medians of interleaved runs:
    5.3-5.5 ms per step unblocked, 3.2-3.6 ms in 64K blocks (5.6-6.0 -> 3.9-4.2 ms inside a
    training step); 48K-128K blocks are equally good, 256K no longer fits the cache, and
    below 32K the per-block Python overhead (a few microseconds) takes over. The result
    is bitwise identical to one pass over the whole buffer: every operation is elementwise,
    the same operations run in the same order, and a per-group vector is sliced with the block.
    Invariant 4 holds in this form: a step makes (number of blocks) x (calls per block) numpy
    calls, which depends on the buffer's size, never on how many parameters or layers fill it.
    ``block_size`` is a class attribute, settable per instance; ``None`` or 0 means one
    block, the whole buffer (the scratch arrays then grow to its size).

    Subclasses define ``_check(group)`` (validation), ``_state_names()`` (the state arrays,
    created as zeros) and ``_update(step)``: the kernel, called once per block. It reaches
    arrays only through accessors that return the current block's view: ``_p()`` (the
    parameters, written in place), ``_grad()`` (the gradient the formulas use), ``_state(name)``
    and ``_scratch()`` (a block-sized temporary, allocated here, never per step); and
    hyperparameters through ``_hp(key)`` (a Python float, or the block's slice of a per-group
    vector) and ``_flag(key)``. ``flat.flat_grad()`` is called once per step, before the first
    block; hyperparameters and flags (bias corrections included) are evaluated at the first
    block and reused by the others, so nothing but the kernel's own calls repeats per block.
    """

    _flags: Sequence[str] = ("maximize",)  # boolean options; all groups must agree
    block_size: int | None = 65536  # elements per block of step(); None or 0: the whole buffer

    def __init__(self, params: Iterable[Parameter] | Iterable[Mapping[str, Any]],
                 defaults: Mapping[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups = [self._make_group(g) for g in _as_groups(params, type(self).__name__)]
        self.flat = flatten_parameters([p for g in self.param_groups for p in g["params"]], subset=True)
        self._layout()
        # Steps taken by each parameter of the flat buffer (torch counts per parameter: a skipped
        # one does not advance); None while all of this optimizer's parameters have taken every step.
        self._param_steps: np.ndarray | None = None
        # The block step() is at (the whole buffer outside step()), its scratch views, the
        # flat gradient and the hyperparameters and flags of this step (None outside step()).
        self._blk = slice(None)
        self._tmp_blk = self._flat_g = None
        self._memo: dict[str, float | np.ndarray] | None = None
        self._flag_memo: dict[str, bool] | None = None
        for key in self._flags:
            self._flag(key)
        # Scratch of one block, allocated once (again only if block_size grows): one temporary,
        # and the decayed gradient, made by the first step that needs it (``_grad``).
        self._grad_buf = self._tmp = np.empty(0, dtype=self.flat.data.dtype)
        self._ensure_scratch(self._block_length())
        self.state: dict[str, Any] = _State(self)
        self.state["step"] = 0
        for name in self._state_names():
            self.state[name] = np.zeros_like(self.flat.data)

    def _layout(self) -> None:
        """Where this optimizer's parameters are in ``self.flat`` (which may hold more than them:
        an optimizer over part of a model), and the per-parameter tables built from that."""
        flat = self.flat
        position = {id(p): i for i, p in enumerate(flat.params)}
        self._indices = [[position[id(p)] for p in g["params"]] for g in self.param_groups]
        # Which group owns each parameter, in flat order: expands per-group values to vectors.
        self._group_of_param = np.zeros(len(flat.params), dtype=np.intp)
        self._own = np.zeros(len(flat.params), dtype=bool)
        for gi, idx in enumerate(self._indices):
            self._group_of_param[idx] = gi
            self._own[idx] = True
        self._whole = bool(self._own.all())
        self._param_sizes = np.diff(flat.offsets)
        self._hp_cache: dict[str, tuple[list[float], np.ndarray]] = {}

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters (torch's method): its keys default to ``defaults``; the
        parameters join the flat buffer (repacked with the others if they were outside it),
        with zero state and no steps taken."""
        group = self._make_group(param_group)
        known = {id(p) for g in self.param_groups for p in g["params"]}
        _invalid(any(id(p) in known for p in group["params"]),
                 f"{type(self).__name__}.add_param_group: some parameters appear in more than one parameter group")
        self._follow()
        steps = self._steps_per_param()
        old_params = self.flat.params
        self.param_groups.append(group)
        flat = flatten_parameters([p for g in self.param_groups for p in g["params"]], subset=True)
        if flat is not self.flat:
            self._follow()
        else:
            self._layout()
        if self.state["step"]:  # the new parameters have taken no step yet
            moved = {id(p): n for p, n in zip(old_params, steps)}
            self._param_steps = np.array([moved.get(id(p), 0) for p in self.flat.params], dtype=np.int64)

    def _follow(self) -> None:
        """Move to the buffer this optimizer's parameters were repacked into (another optimizer
        over more of the model, or ``add_param_group``), carrying each parameter's state."""
        old = self.flat
        new = old
        while new.moved_to is not None:
            new = new.moved_to
        if new is old:
            return
        mine = [p for g in self.param_groups for p in g["params"]]
        src = {id(p): (int(old.offsets[i]), int(old.offsets[i + 1]), i) for i, p in enumerate(old.params)}
        dst = {id(p): (int(new.offsets[i]), i) for i, p in enumerate(new.params)}
        for name, arr in list(self.state.items()):
            if name != "step":
                fresh = np.zeros_like(new.data)
                for p in mine:
                    if id(p) in src:
                        a, b, _ = src[id(p)]
                        fresh[dst[id(p)][0]:dst[id(p)][0] + b - a] = arr[a:b]
                self.state[name] = fresh
        if self._param_steps is not None:
            steps = np.full(len(new.params), self.state["step"], dtype=np.int64)
            for p in mine:
                if id(p) in src:
                    steps[dst[id(p)][1]] = self._param_steps[src[id(p)][2]]
            self._param_steps = steps
        self.flat = new
        self._layout()
        self._ensure_scratch(self._block_length())

    def _steps_per_param(self) -> np.ndarray:
        if self._param_steps is None:
            return np.full(len(self.flat.params), self.state["step"], dtype=np.int64)
        return self._param_steps

    # -- construction ----------------------------------------------------------------------
    def _make_group(self, group: Mapping[str, Any]) -> dict[str, Any]:
        group = dict(group)
        params = group.get("params")
        if params is None:
            raise ValueError(f"{type(self).__name__}: a param group has no 'params' key")
        group["params"] = [params] if isinstance(params, Parameter) else list(params)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check(group)
        return group

    def _check(self, group: Mapping[str, Any]) -> None:
        """Raise ValueError (torch's messages) for an invalid hyperparameter of ``group``;
        subclasses add their own rules after calling this."""
        for key, message in _NON_NEGATIVE.items():
            if key in group:
                value = group[key]
                # A YAML "1e-3" arrives as a string: say so instead of failing inside a comparison.
                _invalid(isinstance(value, bool) or not isinstance(value, numbers.Real),
                         f"{message}: {value!r} is not a number")
                _invalid(not value >= 0.0, f"{message}: {value}")

    def _state_names(self) -> Sequence[str]:
        """Names of the flat state arrays this configuration keeps (torch's state names)."""
        return ()

    def _buffer(self, name: str) -> np.ndarray:
        """State array ``name``; created (zeros) here if an option that needs it was switched
        on in a param group after construction."""
        if name not in self.state:
            self.state[name] = np.zeros_like(self.flat.data)
        return self.state[name]

    # -- the step ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget all gradients in O(1) (the flat buffer advances its generation); they read as
        None until backward writes them. ``set_to_none`` is accepted for torch's signature."""
        self.flat.zero_grad()

    def step(self) -> None:
        """One update of every parameter from its current gradient, block by block. A parameter
        with ``requires_grad=False`` or without a gradient since ``zero_grad`` is skipped, as
        torch skips it: no weight decay, no momentum, its step count does not advance."""
        self._follow()
        runs = self._runs()
        size = self._block_length()
        self._ensure_scratch(size)
        with no_grad():
            self.state["step"] += 1
            # Once per step, where every view holds a gradient (O(1)); a skipped one is not zero-filled.
            flat = self.flat
            self._flat_g = flat.flat_grad() if flat.written == len(flat.params) else flat.grad
            if runs is None:  # the usual case: the whole buffer, one step count
                runs = [(0, max(self.flat.numel, 1), self.state["step"])]
            else:
                for key in self._flags:  # checked even when every parameter is skipped
                    self._flag(key)
            try:
                for lo, hi, step in runs:
                    self._memo, self._flag_memo = {}, {}  # bias corrections differ between runs
                    for start in range(lo, hi, size):
                        end = min(start + size, hi)
                        self._blk, self._tmp_blk = slice(start, end), self._tmp[:end - start]
                        self._update(step)
            finally:
                self._blk, self._memo, self._flag_memo = slice(None), None, None
                self._tmp_blk = self._flat_g = None

    def _runs(self) -> list[tuple[int, int, int]] | None:
        """None when every parameter of the buffer is this optimizer's, requires grad, has a
        gradient and has taken every step (one pass over the whole buffer); else the runs of
        consecutive parameters to update, ``(start, end, their step count after this step)``.
        The arithmetic stays per run, not per parameter: a frozen layer splits one run in two."""
        flat = self.flat
        params = flat.params
        if self._param_steps is None and self._whole and flat.written == len(params) and not flat.frozen:
            return None
        gen = flat.generation
        active = [own and p.requires_grad and p._grad_gen == gen for own, p in zip(self._own, params)]
        steps = self._steps_per_param().copy()
        steps[np.asarray(active, dtype=bool)] += 1
        runs: list[tuple[int, int, int]] = []
        offsets = flat.offsets
        for i, on in enumerate(active):
            if not on:
                continue
            lo, hi, n = int(offsets[i]), int(offsets[i + 1]), int(steps[i])
            if runs and runs[-1][1] == lo and runs[-1][2] == n:
                runs[-1] = (runs[-1][0], hi, n)
            elif hi > lo:
                runs.append((lo, hi, n))
        uniform = self._whole and bool((steps == self.state["step"] + 1).all())
        self._param_steps = None if uniform else steps
        return runs

    def _update(self, step: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define _update()")

    def _block_length(self) -> int:
        """Elements per block: ``block_size``, or the whole buffer for None or 0."""
        size = self.block_size
        # type() first: the abc check of numbers.Integral would cost a microsecond every step.
        if size is not None and (type(size) is not int or size < 0):
            _invalid(isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0,
                     f"{type(self).__name__}: block_size must be a non-negative int or None, got {size!r}")
        return max(min(int(size), self.flat.numel) if size else self.flat.numel, 1)

    def _ensure_scratch(self, size: int) -> None:
        if self._tmp.size < size:
            self._tmp = np.empty(size, dtype=self.flat.data.dtype)
            self._grad_buf = np.empty(0, dtype=self.flat.data.dtype)  # remade at this size when needed

    # -- what a kernel reads: views of the current block --------------------------------------
    def _p(self) -> np.ndarray:
        """The parameters of the current block (a view: the kernel updates it in place)."""
        return self.flat.data[self._blk]

    def _state(self, name: str) -> np.ndarray:
        """State array ``name`` over the current block (created first if needed, ``_buffer``)."""
        buffer = self.state.get(name)
        return (self._buffer(name) if buffer is None else buffer)[self._blk]

    def _scratch(self) -> np.ndarray:
        """A temporary of the current block's length; its contents do not survive the block."""
        return self._tmp_blk

    def _hp(self, key: str, fn: Callable[[Mapping[str, Any]], float] | None = None) -> float | np.ndarray:
        """Hyperparameter ``key`` (or ``fn(group)`` for a derived one, cached under ``key``):
        a Python float if all non-empty groups agree, else the current block's slice of a
        vector over the flat buffer. Evaluated at the first block of a step, reused by the
        others. Python floats keep float32 arithmetic in float32 (NEP 50); np.float64 would not."""
        memo = self._memo
        if memo is None:  # outside step(): the whole buffer
            return self._hp_value(key, fn)
        value = memo.get(key)
        if value is None:
            value = memo[key] = self._hp_value(key, fn)
        return value if value.__class__ is float else value[self._blk]

    def _hp_value(self, key: str, fn: Callable[[Mapping[str, Any]], float] | None) -> float | np.ndarray:
        """``_hp`` over the whole buffer: the float, or the (cached) per-group vector."""
        groups = self.param_groups
        if len(groups) == 1:  # the usual case, every step: one group (with parameters), one float
            return float(fn(groups[0]) if fn else groups[0][key])
        values = [float(fn(g) if fn else g[key]) for g in groups]
        used = {v for v, g in zip(values, groups) if g["params"]}
        if len(used) == 1:
            return used.pop()
        cached = self._hp_cache.get(key)
        if cached is not None and cached[0] == values:
            return cached[1]
        per_param = np.asarray(values, dtype=self.flat.data.dtype)[self._group_of_param]
        vector = np.repeat(per_param, self._param_sizes)
        self._hp_cache[key] = (values, vector)
        return vector

    def _flag(self, key: str) -> bool:
        """A boolean option; it selects the kernel, so every non-empty group must agree.
        Evaluated once per step, like ``_hp``."""
        memo = self._flag_memo
        if memo is not None:
            value = memo.get(key)
            if value is not None:
                return value
        values = {bool(g[key]) for g in self.param_groups if g["params"]}
        _invalid(len(values) > 1, f"{type(self).__name__}: {key} differs between param groups; it "
                 "selects the update formula, which runs over the whole flat buffer")
        value = values.pop() if values else False
        if memo is not None:
            memo[key] = value
        return value

    def _grad(self, l2: bool = True) -> np.ndarray:
        """The current block of the gradient the formulas use: g, or -g with maximize, plus
        wd*p (L2, when ``l2``), computed for this block only, into block-sized scratch. The
        gradient buffer itself is never written: callers may read flat.grad after step."""
        g = self._flat_g[self._blk]
        maximize = self._flag("maximize")
        wd = self._hp("weight_decay") if l2 else 0.0
        if _is(wd, 0.0) and not maximize:
            return g  # read in place: with Adam's and SGD's defaults the scratch is never made
        if self._grad_buf.size < self._tmp.size:
            self._grad_buf = np.empty(self._tmp.size, dtype=self.flat.data.dtype)
        out = self._grad_buf[:g.size]
        if _is(wd, 0.0):
            return np.negative(g, out=out)
        np.multiply(self._p(), wd, out=out)               # g = (-)g + wd * p
        if maximize:
            np.subtract(out, g, out=out)
        else:
            np.add(out, g, out=out)
        return out

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {name: copy of a flat array, "step": int}, "param_groups": [...]}``;
        each group's "params" is the list of its parameters' positions in the flat buffer."""
        groups = []
        for group, idx in zip(self.param_groups, self._indices):
            saved = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            saved["params"] = list(idx)
            groups.append(saved)
        return {"state": self.state_arrays(as_int_step=True), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore state and group hyperparameters saved by ``state_dict()``. Everything is
        validated before anything changes: a mismatch raises ValueError naming it."""
        name = type(self).__name__
        keys = set(state_dict) if isinstance(state_dict, Mapping) else set()
        _invalid(keys != {"state", "param_groups"},
                 f"{name}.load_state_dict: expected a dict with keys 'state' and 'param_groups', got {sorted(keys)}")
        saved_groups = list(state_dict["param_groups"])
        _invalid(len(saved_groups) != len(self.param_groups),
                 f"{name}.load_state_dict: {len(saved_groups)} param groups in the state dict, "
                 f"{len(self.param_groups)} in the optimizer")
        new_groups = []
        for i, (saved, own, idx) in enumerate(zip(saved_groups, self.param_groups, self._indices)):
            _invalid(list(saved.get("params", [])) != idx,
                     f"{name}.load_state_dict: param group {i} holds parameters {list(saved.get('params', []))} "
                     f"in the state dict, {idx} in the optimizer")
            # "initial_lr" is a scheduler's record (torch's name): a state saved before any
            # scheduler was built lacks it, one saved after has it; neither is a mismatch.
            missing = sorted(own.keys() - saved.keys() - {"initial_lr"})
            unexpected = sorted(saved.keys() - own.keys() - {"initial_lr"})
            _invalid(bool(missing or unexpected),
                     f"{name}.load_state_dict: param group {i}: missing {missing}, unexpected {unexpected}")
            group = {**copy.deepcopy({k: v for k, v in saved.items() if k != "params"}), "params": own["params"]}
            if "initial_lr" in own and "initial_lr" not in group:
                group["initial_lr"] = own["initial_lr"]
            self._check(group)
            new_groups.append(group)
        self.load_state_arrays(state_dict["state"])
        self.param_groups[:] = new_groups

    def state_arrays(self, as_int_step: bool = False) -> dict[str, Any]:
        """Copies of the state for a checkpoint: name -> flat array, and "step" (a 0-d int64
        array, so the dict can go straight into ``np.savez``; an int with ``as_int_step``)."""
        step = self.state["step"]
        out: dict[str, Any] = {"step": step if as_int_step else np.asarray(step, dtype=np.int64)}
        out.update((k, v.copy()) for k, v in self.state.items() if k != "step")
        if self._param_steps is not None:  # only after a parameter was skipped
            out["param_steps"] = self._param_steps.copy()
        return out

    def load_state_arrays(self, arrays: Mapping[str, Any]) -> None:
        """Copy state saved by ``state_arrays()`` (or a state_dict's "state") into this
        optimizer, after checking names and sizes; ValueError names any mismatch."""
        name, n = type(self).__name__, self.flat.numel
        arrays = dict(arrays)
        param_steps = arrays.pop("param_steps", None)
        if param_steps is not None:
            param_steps = np.asarray(param_steps)
            _invalid(param_steps.shape != (len(self.flat.params),) or param_steps.dtype.kind not in "iu",
                     f"{name}: optimizer state 'param_steps' has shape {param_steps.shape} in the state dict, "
                     f"({len(self.flat.params)},) (one per parameter) in the optimizer")
        missing, unexpected = sorted(self.state.keys() - arrays.keys()), sorted(arrays.keys() - self.state.keys())
        _invalid(bool(missing or unexpected),
                 f"{name}: optimizer state names differ: missing {missing}, unexpected {unexpected}")
        step = np.asarray(arrays["step"])
        _invalid(step.shape != () or step.dtype.kind not in "iu" or int(step) < 0,
                 f"{name}: optimizer state 'step' must be a non-negative integer, got {arrays['step']!r}")
        for key, value in arrays.items():
            if key != "step":
                _invalid(np.shape(value) != (n,),
                         f"{name}: optimizer state {key!r} has shape {np.shape(value)} in the state dict, "
                         f"({n},) (the flat buffer's size) in the optimizer")
        for key, value in arrays.items():
            if key != "step":
                np.copyto(self.state[key], value, casting="same_kind")
        self.state["step"] = int(step)
        self._param_steps = None if param_steps is None else param_steps.astype(np.int64)

    def _param_state(self, p: Parameter) -> dict[str, Any]:
        self._follow()
        index = next((i for i, q in enumerate(self.flat.params) if q is p and self._own[i]), None)
        if index is None:
            raise KeyError(f"{type(self).__name__}.state: this parameter (shape {p.shape}) is not in the optimizer")
        a, b = int(self.flat.offsets[index]), int(self.flat.offsets[index + 1])
        out: dict[str, Any] = {"step": int(self._steps_per_param()[index])}
        for name, arr in dict.items(self.state):
            if name != "step":
                out[name] = arr[a:b].reshape(p.shape)
        return out

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ({self.flat.numel} parameters in one flat buffer)"]
        for i, group in enumerate(self.param_groups):
            hps = ", ".join(f"{k}={v}" for k, v in group.items() if k != "params")
            lines.append(f"  group {i}: {len(group['params'])} params, {hps}")
        return "\n".join(lines)


class _State(dict):
    """The optimizer's state: flat arrays by name and "step", as distbp keeps them; indexed by
    a parameter, torch's per-parameter view: ``opt.state[p]["exp_avg"]`` is p's slice of the
    flat array (a view: writing it writes the state), ``["step"]`` its step count."""

    def __init__(self, optimizer: "Optimizer") -> None:
        super().__init__()
        self._optimizer = optimizer

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, Parameter):
            return self._optimizer._param_state(key)
        return dict.__getitem__(self, key)

    def __contains__(self, key: Any) -> bool:
        if isinstance(key, Parameter):
            return any(p is key for g in self._optimizer.param_groups for p in g["params"])
        return dict.__contains__(self, key)


def _as_groups(params: Any, owner: str) -> list[Mapping[str, Any]]:
    """torch's rules for the ``params`` argument: an ordered iterable of Parameters or dicts."""
    if isinstance(params, (Parameter, Module)):
        raise TypeError(f"{owner}: params should be an iterable of Parameters or dicts, got "
                        f"{type(params).__name__}; pass model.parameters()")
    if isinstance(params, (set, frozenset, dict)):
        raise TypeError(f"{owner}: params must be an ordered collection (a list), not a "
                        f"{type(params).__name__}, so the flat buffer's order is reproducible")
    items = list(params)
    if not items:
        raise ValueError(f"{owner}: got an empty parameter list")
    if all(isinstance(x, Mapping) for x in items):
        return items
    if any(isinstance(x, Mapping) for x in items):
        raise TypeError(f"{owner}: params mixes Parameters and param-group dicts")
    return [{"params": items}]


def split_decay(named_parameters: Iterable[tuple[str, Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """Two param groups: weights (ndim >= 2) with ``weight_decay``, biases (1-D) with 0.0,
    since the course notes regularize weights, not biases. The flat buffer is created here
    first, in ``named_parameters`` order (the checkpoint order), although the groups reorder."""
    named = list(named_parameters)
    flatten_parameters([p for _, p in named])
    weights = [p for _, p in named if p.ndim >= 2]
    biases = [p for _, p in named if p.ndim < 2]
    return [{"params": weights, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}]

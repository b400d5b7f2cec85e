"""Version shims for JAX's manual-sharding machinery (``shard_map`` and its "varying manual axes" types).

Inside ``jax.shard_map(..., check_vma=True)`` every value's type records the mesh axes over which it differs from
device to device.  JAX's own primitives propagate that record; a primitive of ours (the multilinear kernels'
primitive, the fused message-passing primitive) and a ``pallas_call``'s declared output must do it themselves, or
JAX rejects the program (typically "Expected cotangent type f32[..]{V:axis} but got f32[..]" in the backward pass).
How the record is spelled moved between JAX versions (``aval.vma`` and ``lax.pvary`` up to 0.9,
``aval.manual_axis_type.varying`` and ``lax.pcast(..., to="varying")`` in 0.10), so the few functions that touch it
live here and read whichever exists.  Outside ``shard_map`` (or with ``check_vma=False``) every helper is a no-op.
"""

from __future__ import annotations

from typing import Optional

import jax


def shard_map(f, *, mesh, in_specs, out_specs, check_vma: bool = True):
    """``jax.shard_map`` (JAX >= 0.7) or ``jax.experimental.shard_map.shard_map`` (older, ``check_rep``)."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma)
    from jax.experimental.shard_map import shard_map as legacy  # pragma: no cover

    return legacy(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=check_vma)  # pragma: no cover


def varying_axes(value) -> frozenset:
    """The mesh axes over which ``value`` varies (empty outside ``shard_map`` or without ``check_vma``)."""
    if value is None:
        return frozenset()
    aval = jax.typeof(value) if hasattr(jax, "typeof") else jax.core.get_aval(value)
    return _aval_axes(aval)


def _aval_axes(aval) -> frozenset:
    manual = getattr(aval, "manual_axis_type", None)
    if manual is not None:
        return frozenset(getattr(manual, "varying", ()) or ())
    return frozenset(getattr(aval, "vma", ()) or ())


def vary(value, axes) -> jax.Array:
    """``value`` marked as varying over ``axes`` too (its data unchanged; the transpose is a ``psum``)."""
    missing = tuple(sorted(frozenset(axes) - varying_axes(value)))
    if not missing:
        return value
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(value, missing, to="varying")
    return jax.lax.pvary(value, missing)  # pragma: no cover  (JAX < 0.10)


def match_varying(values):
    """``values`` (``None`` entries kept) all marked as varying over the union of their axes, as JAX's own n-ary
    primitives require of their operands."""
    axes = frozenset().union(*(varying_axes(v) for v in values if v is not None))
    if not axes:
        return list(values)
    return [None if v is None else vary(v, axes) for v in values]


def aval_like(shape, dtype, template) -> jax.core.ShapedArray:
    """A ``ShapedArray(shape, dtype)`` that varies over the same mesh axes as the aval ``template``."""
    shape = tuple(shape)
    if not _aval_axes(template):
        explicit = _explicit_sharding(template, shape)
        if explicit is not None:
            return template.update(shape=shape, dtype=dtype, weak_type=False, sharding=explicit)
        return _shaped_array(shape, dtype)
    if len(shape) == len(template.shape):  # keeps the template's (per-dimension) sharding and varying axes
        return template.update(shape=shape, dtype=dtype, weak_type=False)
    # another rank: the template's mesh, replicated over its automatic axes (the manual ones are per shard anyway)
    sharding = jax.sharding.NamedSharding(template.sharding.mesh, jax.sharding.PartitionSpec())
    return template.update(shape=shape, dtype=dtype, weak_type=False, sharding=sharding)


def _explicit_sharding(template, shape):
    """On a mesh with *explicit* axes, the sharding of a result of ``shape`` computed row by row from ``template``:
    sharded like the template's first axis where the row counts agree, else replicated on the mesh; None elsewhere
    (automatic axes or no mesh, where avals carry no sharding).

    Without it a primitive's result is typed as replicated, and XLA all-gathers the batch for it (the gradients of
    every tensor product and message pass on ``jax.make_mesh``'s default mesh did).
    """
    sharding = getattr(template, "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    axis_types = getattr(mesh, "axis_types", None)
    explicit_type = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if mesh is None or getattr(mesh, "empty", True) or explicit_type is None or explicit_type not in (axis_types or ()):
        return None
    spec = tuple(getattr(sharding, "spec", ()) or ())
    lead = spec[0] if spec and shape and template.shape and shape[0] == template.shape[0] else None
    rest = [None] * max(0, len(shape) - 1)
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*([lead] + rest if shape else [])))


def has_explicit_sharding(value) -> bool:
    """Whether ``value``'s type names a mesh with *explicit* axes (its sharding is part of the type, so a reshape
    that splits a sharded axis must say its output sharding)."""
    aval = jax.typeof(value) if hasattr(jax, "typeof") else jax.core.get_aval(value)
    return _explicit_sharding(aval, aval.shape) is not None


def struct_like(struct, template) -> Optional[jax.ShapeDtypeStruct]:
    """``jax.ShapeDtypeStruct`` ``struct`` (e.g. a ``pallas_call``'s ``out_shape``) marked with the varying axes of
    the array ``template``; ``struct`` unchanged where this JAX has no such field."""
    aval = jax.typeof(template) if hasattr(jax, "typeof") else jax.core.get_aval(template)
    manual = getattr(aval, "manual_axis_type", None)
    try:
        if manual is not None:
            return jax.ShapeDtypeStruct(struct.shape, struct.dtype, manual_axis_type=manual)
        if getattr(aval, "vma", None) is not None:  # pragma: no cover  (JAX < 0.10)
            return jax.ShapeDtypeStruct(struct.shape, struct.dtype, vma=aval.vma)
    except TypeError:  # pragma: no cover  (a JAX whose ShapeDtypeStruct takes neither)
        pass
    return struct


def explicit_row_sharding(index, trailing_ndim: int):
    """Under a mesh with *explicit* axes (``jax.make_mesh``'s default in recent JAX), a gather ``table[index]`` of a
    replicated table by a sharded index cannot infer its output sharding: this returns the ``NamedSharding`` that
    shards the result like ``index`` (``trailing_ndim`` replicated dimensions after), or None elsewhere (auto axes,
    no mesh, older JAX), where nothing needs to be said."""
    sharding = getattr(jax.typeof(index) if hasattr(jax, "typeof") else None, "sharding", None)
    spec = tuple(getattr(sharding, "spec", ()) or ())
    if not any(entry is not None for entry in spec):
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec, *([None] * trailing_ndim)))


def _shaped_array(shape, dtype):
    shaped = getattr(jax.core, "ShapedArray", None)
    if shaped is None:  # pragma: no cover
        from jax._src.core import ShapedArray as shaped
    return shaped(tuple(shape), dtype)


def operand_mesh(value):
    """A context in which ``value``'s mesh is the current abstract mesh (a no-op where it has none).

    A primitive lowered with ``mlir.lower_fun`` traces its implementation outside the caller's mesh context, but on
    a mesh with *explicit* axes the operands' types name that mesh's axes; JAX operations that build new sharded
    types in there (a ``scan`` carry, a ``vmap``) must see the mesh, or they fail with "Resource axis ... is not found
    in mesh: ()".
    """
    import contextlib

    aval = jax.typeof(value) if hasattr(jax, "typeof") else jax.core.get_aval(value)
    mesh = getattr(getattr(aval, "sharding", None), "mesh", None)
    use = getattr(jax.sharding, "use_abstract_mesh", None)
    if use is None or mesh is None or getattr(mesh, "empty", True) or not getattr(mesh, "axis_names", ()):
        return contextlib.nullcontext()
    current = jax.sharding.get_abstract_mesh() if hasattr(jax.sharding, "get_abstract_mesh") else None
    if current is not None and not getattr(current, "empty", True):
        return contextlib.nullcontext()  # already inside a mesh context
    return use(getattr(mesh, "abstract_mesh", mesh))

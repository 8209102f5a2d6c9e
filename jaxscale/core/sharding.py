"""The one table from logical axis names to mesh axes, mesh construction and constraints."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxscale.config import ConfigError, MeshConfig
from jaxscale.config import axes as ax

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. A mesh axis already used earlier in the same array is skipped,
# so activations (batch, length, embed) shard batch over data+fsdp and keep embed whole,
# while parameters (embed, mlp) shard embed over fsdp (ZeRO-3) and mlp over tensor (Megatron).
RULES: dict[str, tuple[str, ...]] = {
    ax.BATCH: ("data", "fsdp"),
    ax.LENGTH: (),
    ax.EMBED: ("fsdp",),
    ax.MLP: ("tensor",),
    ax.HEADS: ("tensor",),
    ax.KV_HEADS: ("tensor",),
    ax.HEAD_DIM: (),
    ax.VOCAB: ("tensor",),
    ax.LAYERS: (),
    ax.NORM: (),
}


def logical_to_spec(names: Sequence[str | None], mesh: Mesh | None = None) -> PartitionSpec:
    """PartitionSpec for logical axis names under RULES (size-1 mesh axes dropped)."""
    used: set[str] = set()
    out = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in RULES:
            raise ConfigError(f"logical axis {name!r} has no sharding rule; add it to RULES")
        mesh_axes = [
            a for a in RULES[name] if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1)
        ]
        used.update(mesh_axes)
        out.append(
            tuple(mesh_axes) if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None)
        )
    return PartitionSpec(*out)


def make_mesh(cfg: MeshConfig | str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh (data, fsdp, tensor) over the given (default: all) devices; -1 fills the rest."""
    if isinstance(cfg, str):
        cfg = MeshConfig(spec=cfg)
    devices = list(devices if devices is not None else jax.devices())
    sizes = cfg.axes()
    n = len(devices)
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if -1 in sizes.values():
        if n % fixed:
            raise ConfigError(
                f"mesh {cfg.spec!r}: the fixed axes multiply to {fixed}, which does not divide "
                f"the {n} available devices"
            )
        sizes = {k: (n // fixed if v == -1 else v) for k, v in sizes.items()}
    if math.prod(sizes.values()) != n:
        raise ConfigError(
            f"mesh {cfg.spec!r} needs {math.prod(sizes.values())} devices but {n} are available; "
            "use -1 on one axis to take the rest"
        )
    shape = tuple(sizes[a] for a in MESH_AXES)
    dev_array = np.asarray(devices).reshape(shape)
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return Mesh(dev_array, MESH_AXES, axis_types=auto)


def tree_shardings(mesh: Mesh, logical_tree, shapes_tree=None):
    """NamedShardings for a tree of logical-name tuples; checks each sharded dim divides."""
    is_names = lambda x: isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x)

    def one(path, names, shape=None):
        spec = logical_to_spec(names, mesh)
        if shape is not None:
            for dim, part in zip(shape.shape, spec):
                parts = (part,) if isinstance(part, str) else (part or ())
                k = math.prod(mesh.shape[p] for p in parts)
                if dim % k:
                    raise ConfigError(
                        f"parameter {jax.tree_util.keystr(path)} dim {dim} is not divisible by "
                        f"mesh axes {parts} (size {k}); change the model width or the mesh"
                    )
        return NamedSharding(mesh, spec)

    if shapes_tree is None:
        return jax.tree_util.tree_map_with_path(one, logical_tree, is_leaf=is_names)
    return jax.tree_util.tree_map_with_path(one, logical_tree, shapes_tree, is_leaf=is_names)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names under the active mesh; a no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, mesh))


def batch_divisor(mesh: Mesh) -> int:
    """How many ways the batch axis is split (data x fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def maybe_initialize_distributed(cfg: MeshConfig) -> None:
    """Call jax.distributed.initialize when asked by config or JAXSCALE_DISTRIBUTED=1."""
    if not (cfg.distributed or os.environ.get("JAXSCALE_DISTRIBUTED") == "1"):
        return
    if jax.distributed.is_initialized():
        return
    kw = {}
    coord = cfg.coordinator or os.environ.get("JAXSCALE_COORDINATOR")
    nproc = cfg.num_processes or os.environ.get("JAXSCALE_NUM_PROCESSES")
    pid = cfg.process_id if cfg.process_id is not None else os.environ.get("JAXSCALE_PROCESS_ID")
    if coord:
        kw["coordinator_address"] = coord
    if nproc is not None:
        kw["num_processes"] = int(nproc)
    if pid is not None:
        kw["process_id"] = int(pid)
    # With no arguments JAX auto-detects the cluster on Cloud TPU, Slurm and GKE.
    jax.distributed.initialize(**kw)

"""Collection layouts: the declarative files in `schemas/` (shipped as `connector.schemas`)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from connector.errors import ConfigError, SchemaMismatchError

if TYPE_CHECKING:
    from connector.sinks.base import CollectionInfo


@dataclass(frozen=True)
class VectorSpec:
    name: str
    kind: str  # 'dense' or 'sparse'
    distance: str | None = None
    size: int | str | None = None  # an int, or 'model'


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str  # text, keyword, int, json
    index: bool = False
    max_length: int | None = None


@dataclass(frozen=True)
class Layout:
    name: str
    vectors: tuple[VectorSpec, ...]
    fields: tuple[FieldSpec, ...]

    def vector(self, name: str) -> VectorSpec:
        return next(v for v in self.vectors if v.name == name)

    @property
    def dense_names(self) -> list[str]:
        return [v.name for v in self.vectors if v.kind == "dense"]

    def sizes(self, model: int | None, projection: int | None = None) -> dict[str, int]:
        """The size of every dense vector: 'model' is the encoder's, 'projection' the legacy k."""
        out = {}
        for spec in self.vectors:
            if spec.kind != "dense":
                continue
            size = {"model": model, None: model, "projection": projection}.get(spec.size, spec.size)
            if size is None:
                raise ConfigError(
                    f"layout '{self.name}': vector '{spec.name}' takes the projection size; set projection.dim"
                )
            out[spec.name] = int(size)
        return out

    def oversized(self, payload: dict) -> str | None:
        """Why `payload` cannot be stored (a text field longer than its max_length, counted in UTF-8
        bytes as Milvus counts VARCHAR), or None. Checked before writing, on every backend, so that
        one long value fails its document alone instead of the batch it would be written in."""
        for field in self.fields:
            value = payload.get(field.name)
            if field.max_length and isinstance(value, str):
                size = len(value.encode("utf-8", "surrogatepass"))
                if size > field.max_length:
                    return (f"payload field '{field.name}' is {size} bytes (UTF-8), over the limit of "
                            f"{field.max_length} (max_length in the '{self.name}' layout)")
        return None

    def check(self, info: "CollectionInfo", sizes: dict[str, int]) -> None:
        """Raise SchemaMismatchError naming every difference between `info` and this layout."""
        problems = []
        for spec in self.vectors:
            kind = info.vectors.get(spec.name)
            if kind is None:
                problems.append(f"vector '{spec.name}' ({spec.kind}) is missing")
            elif kind != spec.kind:
                problems.append(f"vector '{spec.name}' is {kind}, expected {spec.kind}")
            elif kind == "dense" and info.dense_sizes.get(spec.name) not in (None, sizes[spec.name]):
                source = "the model gives" if spec.size in ("model", None) else "the config asks for"
                problems.append(
                    f"vector '{spec.name}' has size {info.dense_sizes[spec.name]}, {source} {sizes[spec.name]}"
                )
        dense_spec = next((v for v in self.vectors if v.name == "dense" and v.kind == "dense"), None)
        if (
            dense_spec is not None
            and dense_spec.distance
            and info.dense_distance
            and info.vectors.get("dense") == "dense"
            and info.dense_distance.lower() != dense_spec.distance.lower()
        ):
            problems.append(f"vector 'dense' uses {info.dense_distance} distance, expected {dense_spec.distance}")
        problems.extend(info.problems)
        if info.fields:
            for field in self.fields:
                if field.name not in info.fields:
                    problems.append(f"payload field '{field.name}' is missing")
        if problems:
            raise SchemaMismatchError(
                f"collection '{info.name}' does not match the '{self.name}' layout: "
                + "; ".join(problems)
                + ". Nothing was written. Use another collection name in the config, or drop the "
                "collection (`connector schema -c CONFIG --recreate`) to rebuild it."
            )


def schemas_dir():
    """`schemas/`: installed as the `connector.schemas` package, or read from a source checkout."""
    try:
        return resources.files("connector.schemas")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "schemas"


def load_layout(name: str = "chunks", legacy_field: str | None = None) -> Layout:
    """Read `schemas/<name>.yaml` from the installed package; the vector called `legacy` there
    takes the name `legacy_field` (the config's projection.field)."""
    text = schemas_dir().joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    vectors = tuple(
        VectorSpec(name=legacy_field if k == "legacy" and legacy_field else k, **v) for k, v in data["vectors"].items()
    )
    fields = tuple(FieldSpec(name=k, **v) for k, v in data["payload"].items())
    return Layout(name=data["name"], vectors=vectors, fields=fields)

"""The behavioural checks a model spec declares (`checks:` in spec.yaml), as frozen records.

`DeclaredChecks.from_dict` reads a validated `checks` block; each check is None where the spec
does not declare it, and each setting None where the spec leaves it to the build. The
defaults live with the code that applies them (`migration/forgetting.py`, `drift.py`,
`paramcheck.py`; a causal LM's forgetting its own), so a record says what the spec says and
no more. Numbers keep the type the spec gave them: the build records thresholds as written,
and a manifest's bytes are part of its id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FORGETTING = "forgetting"
DRIFT = "drift"
PARAMETERS = "parameters"


def _given(block: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `block` whose value is not None, in its order."""
    return {k: v for k, v in block.items() if v is not None}


@dataclass(frozen=True)
class ForgettingSpec:
    """`checks.forgetting`: a dataset of the source task, and the largest relative drop
    allowed on it (None: the build's default)."""

    data: str
    max_drop: float | None = None

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> ForgettingSpec:
        """Read a validated `checks.forgetting` block."""
        return cls(data=str(block["data"]), max_drop=block.get("max_drop"))

    def to_dict(self) -> dict[str, Any]:
        """The block, with the settings the spec gives (in the schema's order)."""
        return _given({"data": self.data, "max_drop": self.max_drop})


@dataclass(frozen=True)
class DriftSpec:
    """`checks.drift`: the dataset compared with the source's training data (None: the
    model's training data), and the thresholds that gate (None: no gate on that figure)."""

    data: str | None = None
    max_mahalanobis: float | None = None
    max_outlier_share: float | None = None
    min_mmd_pvalue: float | None = None
    permutations: int | None = None  # of the MMD test (None: the build's default)

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> DriftSpec:
        """Read a validated `checks.drift` block."""
        data = block.get("data")
        return cls(
            data=None if data is None else str(data),
            max_mahalanobis=block.get("max_mahalanobis"),
            max_outlier_share=block.get("max_outlier_share"),
            min_mmd_pvalue=block.get("min_mmd_pvalue"),
            permutations=block.get("permutations"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The block, with the settings the spec gives (in the schema's order)."""
        return _given(
            {
                "data": self.data,
                "max_mahalanobis": self.max_mahalanobis,
                "max_outlier_share": self.max_outlier_share,
                "min_mmd_pvalue": self.min_mmd_pvalue,
                "permutations": self.permutations,
            }
        )


@dataclass(frozen=True)
class ParametersSpec:
    """`checks.parameters`: bounds on a trainable tensor's relative change (None: no gate
    above; the build's default below)."""

    max_relative_change: float | None = None
    min_relative_change: float | None = None

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> ParametersSpec:
        """Read a validated `checks.parameters` block."""
        return cls(
            max_relative_change=block.get("max_relative_change"),
            min_relative_change=block.get("min_relative_change"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The block, with the settings the spec gives (in the schema's order)."""
        return _given(
            {
                "max_relative_change": self.max_relative_change,
                "min_relative_change": self.min_relative_change,
            }
        )


@dataclass(frozen=True)
class DeclaredChecks:
    """A model spec's `checks:` block: each check None where the spec does not declare it
    (an empty block declares it with every setting left to the build)."""

    forgetting: ForgettingSpec | None = None
    drift: DriftSpec | None = None
    parameters: ParametersSpec | None = None

    @classmethod
    def from_dict(cls, block: Mapping[str, Any]) -> DeclaredChecks:
        """Read a validated `checks` block (empty: nothing declared)."""
        forgetting, drift, parameters = (block.get(k) for k in (FORGETTING, DRIFT, PARAMETERS))
        return cls(
            forgetting=None if forgetting is None else ForgettingSpec.from_dict(forgetting),
            drift=None if drift is None else DriftSpec.from_dict(drift),
            parameters=None if parameters is None else ParametersSpec.from_dict(parameters),
        )

    def to_dict(self) -> dict[str, Any]:
        """The block, with the checks the spec declares (in the schema's order)."""
        return {
            name: check.to_dict()
            for name, check in (
                (FORGETTING, self.forgetting),
                (DRIFT, self.drift),
                (PARAMETERS, self.parameters),
            )
            if check is not None
        }

    @property
    def names(self) -> tuple[str, ...]:
        """The declared checks' names: forgetting, drift, parameters, in that order."""
        declared = (
            (FORGETTING, self.forgetting),
            (DRIFT, self.drift),
            (PARAMETERS, self.parameters),
        )
        return tuple(name for name, check in declared if check is not None)

    @property
    def datasets(self) -> tuple[tuple[str, str], ...]:
        """(check, dataset) for each check that names a dataset: forgetting, then drift."""
        found = []
        if self.forgetting is not None:
            found.append((FORGETTING, self.forgetting.data))
        if self.drift is not None and self.drift.data is not None:
            found.append((DRIFT, self.drift.data))
        return tuple(found)

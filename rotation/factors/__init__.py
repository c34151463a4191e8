"""Factor library (SPEC §4): numba kernels over (dates × symbols) panels, configured specs.

* :mod:`rotation.factors.kernels` — numba kernels (no look-ahead, NaN = no bar, bar clock).
* :mod:`rotation.factors.registry` — :class:`FactorSpec`, the kernel catalogue, configuration
  loading and the reference set :data:`DEFAULT_FACTORS`.
* :mod:`rotation.factors.compute` — :class:`Panels` and the pandas wrappers.
"""

from rotation.factors.compute import Panels, compute_factor, compute_factors, factors_long
from rotation.factors.registry import (
    DEFAULT_FACTOR_CONFIG,
    DEFAULT_FACTORS,
    KERNELS,
    UNITS,
    FactorConfigError,
    FactorSpec,
    KernelInfo,
    Param,
    factor_spec,
    factor_specs_from_config,
    factor_specs_from_yaml,
    factor_table,
    get_factor,
)

__all__ = [
    "DEFAULT_FACTORS",
    "DEFAULT_FACTOR_CONFIG",
    "KERNELS",
    "UNITS",
    "FactorConfigError",
    "FactorSpec",
    "KernelInfo",
    "Panels",
    "Param",
    "compute_factor",
    "compute_factors",
    "factor_spec",
    "factor_specs_from_config",
    "factor_specs_from_yaml",
    "factor_table",
    "factors_long",
    "get_factor",
]

"""jaxscale: neural scaling-law studies of transformer LMs in JAX/Flax."""

__version__ = "0.1.0"

"""neuron_lib: neuron-level interpretability of transformer LMs (Universal Neurons rebuild).

One module per concern; each pipeline stage runs as ``python -m neuron_lib.<name>``.
"""

__version__ = "0.1.0"

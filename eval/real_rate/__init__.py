"""Speed at the rate real models decode: real-rate traces, our engine and the peers' on one GPU (README.md)."""

"""Tools for demos, tests and benchmarks: a local registry launcher and sample images.

Not used by the node-side commands; kept in the package so the README demo, the test rig
and bench/ share one implementation.
"""

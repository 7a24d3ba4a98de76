"""Tests of the modular core (states, params, blocks, ModularPipeline)."""

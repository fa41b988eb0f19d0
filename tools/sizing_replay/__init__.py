"""The pool sizing replay: synthetic checkout traces (traces.py) and a minute-by-minute simulation
of a pool sized by the controller or fixed (simulator.py). Used by bench/sizing.py and the tests."""

"""The bad-input corpus: generated at test time, one table per input class.

Each case is (name, make, expect): `make(folder)` writes the input and returns what to pass
(a path or a string); `expect` is "answers" (the runtime answers exactly as the reference)
or the typed error class name the runtime must raise (exit code 2 with `error:` / `fix:` on
the command line).
"""

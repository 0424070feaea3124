"""Benchmarks of consentgate's jobs against their obvious alternatives (``make bench``).

A package so that ``python bench/run.py`` and the smoke test import the same modules; nothing
here is part of the installed ``consentgate`` package.
"""

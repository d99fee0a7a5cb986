"""Helpers of tools/bench_fio.py: process and mount handling, fio jobs, targets, report."""

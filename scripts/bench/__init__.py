"""The benchmarks behind BENCHMARKS.md, run from the repository root as modules::

    python -m scripts.bench.NAME [flags]        # e.g. python -m scripts.bench.attacks --help

Entry points (each module's docstring says what it measures and its flags):

* ``attacks``: PGD-10 and APGD-CE against hand-written loops; AutoAttack on digits;
* ``apgd_instructions``: APGD-CE vs hand-written passes in instructions (callgrind) and wall time;
* ``callback``: each training method through its callback vs written by hand (CPU/wall ratios
  with 95% intervals, robust accuracy); ``callback_instructions``: the same in instructions;
  ``profile_callback``: where the difference goes (a ``torch.profiler`` diff);
* ``methods``: training cost of each ``advtrain-train`` method against PGD-AT and standard;
* ``bounds``: IBP against a forward pass, CROWN and CROWN-IBP time and memory;
* ``certify``: randomized-smoothing certify against bare noisy forward passes, sequential mode;
* ``evidence``: the cost of the evaluation's tamper-evidence (HMAC digests, signature);
* ``compare_auto_lirpa``, ``compare_reference_autoattack``, ``compare_torchattacks``: the same
  computation by an outside reference library;
* ``gpu_check``: the prepared check for a lent GPU (through ``scripts/gpu_check.sh``).

Shared, not run directly: ``timing`` (interleaved pairs, medians and their confidence
intervals, thread pinning, the machine's description, Markdown tables), ``baselines``
(hand-written loops and data used by several benchmarks), ``callback_variants`` (each method
through its callback and by hand), ``callgrind`` (phases counted in instructions).
"""

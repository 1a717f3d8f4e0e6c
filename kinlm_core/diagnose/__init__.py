"""``kinlm diagnose``: the synthetic diagnostic suite (MQAR and MAD's tasks) as a command over a registry.

Modules, one concern each:

    registry  the tasks and architectures the installed plugins register (hook ``kinlm_diagnostics``)
    plan      the tiers and the fairness policy (seeds, lr grid, retunes) as data; the points of a run,
              the spec of each, state sizes and the time estimate (``--plan``)
    run       tuning (lr grid on tuning seeds, validation split), the verdict runs (their own seeds, the
              test split) and the state-size sweep, each through ``kinlm sweep`` (finished points skipped)
    report    results with 95% t-intervals over seeds, ceiling / chance detection, the page section
    figures   accuracy against difficulty and accuracy against state bytes, with bands
"""

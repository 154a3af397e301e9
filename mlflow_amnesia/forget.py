"""``mlflow_amnesia.forget``: kept as an import path; the code lives in :mod:`mlflow_amnesia.jobs.forget`."""

from mlflow_amnesia.jobs.forget import (  # noqa: F401 - re-exported
    DEFAULT_MAX_STEP_SHARE,
    Completion,
    ForgetPlan,
    ForgetRequest,
    ForgetResult,
    PlannedForget,
    check_step_share,
    complete_registration,
    describe_forget,
    forget,
    plan_forget,
    registered_plan,
    registration_left,
    run_forget,
)

__all__ = [
    "check_step_share",
    "complete_registration",
    "Completion",
    "DEFAULT_MAX_STEP_SHARE",
    "describe_forget",
    "forget",
    "ForgetPlan",
    "ForgetRequest",
    "ForgetResult",
    "plan_forget",
    "PlannedForget",
    "registered_plan",
    "registration_left",
    "run_forget",
]

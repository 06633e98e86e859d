"""Models of the service's own routes: health and metadata."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


# GET /healthz and GET /readyz.
class Health(BaseModel):
    status: str = Field(description="`ok` when healthy.")
    checks: dict[str, str] = Field(default_factory=dict, description="Each readiness check and its outcome.")


# One registered activation.
class ActivationInfo(BaseModel):
    name: str
    formula: str
    derivative_formula: str
    output_only: bool


# One registered cost.
class CostInfo(BaseModel):
    name: str
    output_activations: Optional[list[str]] = Field(description="Output activations it pairs with; null: any.")
    fused_activation: str = Field(description="The output activation for which dZ_L simplifies exactly "
                                              "(`fused_formula`).")
    fused_formula: str = Field(description="dZ_L of that canonical pair, `{L}` standing for the last layer's "
                                           "number: `A{L} - Y`.")
    formula: str
    dA_formula: str
    label_domain: str
    output_domain: str = Field(description="What AL may hold in POST /v1/cost (taken as exact there).")


# One optimizer rule in one convention (POST /v1/optimizer-step).
class RuleInfo(BaseModel):
    hyperparameters: dict[str, float] = Field(description="Each hyperparameter and its default.")
    state: list[str] = Field(description="The state it keeps, each a dictionary keyed by gradient name.")
    extras: list[str] = Field(description="What else the response holds (Adam's bias-corrected moments).")
    step_number: Optional[str] = Field(description="How t is used: `as sent`, `t + 1`; null: no step number.")
    formula: str


# One registered optimizer.
class OptimizerInfo(BaseModel):
    name: str
    description: str
    conventions: dict[str, RuleInfo]
    mistakes: list[str] = Field(description="The diagnosis codes of its typical mistakes (POST /v1/grade).")


def optimizer_info(unit) -> OptimizerInfo:
    """A registered optimizer (service.engine.optimizers.Optimizer) as /v1 lists it."""
    def step_number(rule) -> Optional[str]:
        if rule.t_used is None:
            return None
        return "as sent" if rule.t_used(1) == 1 else f"t + {rule.t_used(1) - 1}"

    return OptimizerInfo(
        name=unit.name, description=unit.description,
        conventions={c: RuleInfo(hyperparameters=r.defaults, state=list(r.state), extras=list(r.extras),
                                 step_number=step_number(r), formula=r.formula) for c, r in unit.rules.items()},
        mistakes=sorted({m.code for m in unit.mistakes}))


# One parameter, running statistic or hyperparameter of a layer kind.
class FieldInfo(BaseModel):
    name: str
    description: str
    l2: Optional[bool] = Field(default=None, description="Parameters: whether L2 regularizes it.")
    type: Optional[str] = Field(default=None, description="Hyperparameters: `float`, `int`, `int_pair` or `choice`.")
    default: Any = Field(default=None, description="Hyperparameters: the default (absent: required).")
    choices: Optional[list[str]] = None


# One registered layer kind, from its registry unit.
class KindInfo(BaseModel):
    name: str
    description: str
    params: list[FieldInfo]
    state: list[FieldInfo] = Field(description="Running statistics it reads (optional) and returns updated.")
    hyperparameters: list[FieldInfo]
    default_activation: Optional[str] = Field(description="null: `activation` must be sent.")
    formulas: dict[str, str] = Field(description="`forward`, `backward` (the input's gradient) and `d<param>`, in text.")
    latex: dict[str, str] = Field(description="The same in LaTeX.")
    mistakes: list[str] = Field(description="The diagnosis codes of this kind's typical mistakes (POST /v1/grade).")


def kind_info(kind) -> KindInfo:
    """A registered kind (service.engine.kinds.Kind) as /v1 lists it."""
    from service.engine.kinds import REQUIRED

    f = kind.formulas
    return KindInfo(
        name=kind.name, description=kind.description,
        params=[FieldInfo(name=p.name, description=p.description, l2=p.l2) for p in kind.params],
        state=[FieldInfo(name=s.name, description=s.description) for s in kind.states],
        hyperparameters=[FieldInfo(name=h.name, description=h.description, type=h.type,
                                   default=None if h.default is REQUIRED else h.default,
                                   choices=list(h.choices) or None) for h in kind.hypers],
        default_activation=kind.default_activation,
        formulas={"forward": f.forward, "backward": f.backward, **{f"d{p}": t for p, (t, _) in f.grads.items()}},
        latex={"forward": f.forward_latex, "backward": f.backward_latex,
               **{f"d{p}": tex for p, (_, tex) in f.grads.items()}},
        mistakes=[m.code for m in kind.mistakes])


# GET /v1: what this deployment supports and allows.
class ServiceInfo(BaseModel):
    name: str
    version: str
    activations: list[ActivationInfo]
    costs: list[CostInfo]
    kinds: list[KindInfo] = Field(description="The layer kinds (`layers[i].type`), from the engine's registry.")
    optimizers: list[OptimizerInfo] = Field(description="The optimizers of POST /v1/optimizer-step.")
    grading_tasks: dict[str, str] = Field(description="Each `task` of POST /v1/grade and the route whose body it "
                                                      "grades.")
    layouts: list[str]
    weight_layouts: list[str]
    intermediates: list[str]
    limits: dict[str, int] = Field(description="Active per-request limits, body bytes included.")
    api_keys_required: bool

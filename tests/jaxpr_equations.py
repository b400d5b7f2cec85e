"""Shared test helper: every equation of a jaxpr, those of the jaxprs nested in its equations' parameters included
(custom JVP calls, pjit, scans), so that a test can look for a primitive wherever tracing put it."""


def all_equations(jaxpr):
    """The equations of ``jaxpr`` (a Jaxpr or ClosedJaxpr) and of every jaxpr nested in their parameters, depth
    first."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for equation in jaxpr.eqns:
        yield equation
        for param in equation.params.values():
            for value in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    yield from all_equations(inner)

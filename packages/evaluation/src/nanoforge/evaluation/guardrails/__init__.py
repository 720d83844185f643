"""Guardrails: pure text-in, decision-out checks usable as middleware in the inference server and RAG.

    from nanoforge.evaluation.guardrails import Pipeline
    rails = Pipeline.from_config({"input": [{"type": "pii"}, {"type": "injection"}],
                                  "output": [{"type": "groundedness", "threshold": 0.6}]})
    rails.check_input("mail me at ana@uni.edu").redacted_text    # 'mail me at [EMAIL]'

Modules: ``base`` (Finding, RailResult, Rail protocol), ``pii`` (e-mail, phone, card+Luhn, IBAN+mod-97,
secrets + entropy; redaction), ``injection`` (prompt-injection / jailbreak score), ``topics`` (deny-lists),
``schema`` (JSON Schema of outputs), ``grounding`` (answer sentences vs cited chunks), ``registry``
(type name -> builder), ``pipeline`` (input / output stages), ``labelled`` (the labelled set and its
precision / recall).

What it deliberately does not do: import gRPC or any server code, or call a model.
"""

from nanoforge.evaluation.guardrails.base import Finding, Rail, RailResult
from nanoforge.evaluation.guardrails.pipeline import Pipeline
from nanoforge.evaluation.guardrails.registry import RAIL_BUILDERS, build_rail

__all__ = ["RAIL_BUILDERS", "Finding", "Pipeline", "Rail", "RailResult", "build_rail"]

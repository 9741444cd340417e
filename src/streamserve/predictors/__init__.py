"""Predictors: the stream processor's one seam to a model (``base.Predictor``).

- ``embedded.EmbeddedPredictor``: the repository and runtimes in-process (mode
  ``embedded`` or ``fallback``);
- ``tfserving_grpc`` / ``tfserving_rest`` / ``v2_grpc`` / ``v2_rest``: remote clients with
  long-lived connections (``grpc_channel.GrpcTarget``, ``http_target.HttpTarget``) whose
  failures map to typed errors through ``status``;
- ``balancer.BalancedPredictor``: least outstanding requests over several targets;
- ``factory.create_predictor(PredictorSpec(...))``: build any of them from a spec.

Remote predictors bind their connections to the event loop of their first call.
"""

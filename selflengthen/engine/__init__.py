"""Models and the vLLM engine: model resolution, server launch, endpoint mode, sampling defaults."""

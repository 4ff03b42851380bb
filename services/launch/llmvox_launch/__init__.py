"""`llmvox-launch`: the whole platform on one machine, as supervised child processes.

Redis (when none answers), the ASR and LLM gRPC servers, N TTS replicas and the gateway, started
in that order with readiness waited for; their output is prefixed with their names; Ctrl-C stops
them all. The pieces, from pure to I/O:

- `settings.py`: the flags (the original server's names) as one pydantic-settings class;
- `plan.py`: flags + facts about the machine → child process specs (pure);
- `output.py`: line prefixing and the last lines of each child (pure);
- `machine.py`: the facts (CPU and GPU count, offline models, checkpoints, Redis, free ports);
- `readiness.py`: the checks (gRPC health, Redis heartbeat key, HTTP 200);
- `supervisor.py`: starts, watches and stops the children;
- `cli.py`: `main`.
"""

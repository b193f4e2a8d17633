"""Rule families of the policy engine (the [rules] keys of policy.toml), one module each.

Every rule is a small pure function over the engine's context (``checks._Context``): it reads the
parsed message, the policy and the history handed in, and adds flags and reasons. No I/O here.
"""

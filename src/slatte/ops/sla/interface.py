# Placeholder while the SLA op is being written (see issue 3); replaced by the real interface.
def sla_block_map(*args, **kwargs):
    raise NotImplementedError


def sparse_linear_attention(*args, **kwargs):
    raise NotImplementedError

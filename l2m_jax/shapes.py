"""The shape vocabulary used in names (`x_BxLxD`) and annotations across l2m_jax.

B  batch                 L  sequence length (positions)    D  model width
H  heads (query)         K  key/value heads (KV cache)     E  head dimension
P  SSM head dimension    N  SSM state size (d_state)       G  SSM groups (B/C sharing)
C  channels of a Gaussian vector token                     V  vocabulary size
S  cache capacity (preallocated length)                    T  tokens in a flat stream
"""

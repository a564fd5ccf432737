"""`python -m l2m_jax` is the same CLI as `l2m`."""

from l2m_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

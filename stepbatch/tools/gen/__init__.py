"""Signed synthetic traffic of honest walkers and attackers (`stepbatch gen`); see `generate`."""

from stepbatch.tools.gen.generate import (
                                          ATTACK_CODES,
                                          DEFAULT_ATTACK_SHARE,
                                          DEFAULT_CENTER,
                                          DEFAULT_LEVEL,
                                          DEFAULT_PROOFS,
                                          DEFAULT_RADIUS_M,
                                          DEFAULT_SEED,
                                          DEFAULT_START_TIME,
                                          DEFAULT_WALKERS,
                                          KINDS,
                                          MAX_ATTACK_SHARE,
                                          Traffic,
                                          generate,
                                          output_format,
)

__all__ = ["generate", "Traffic", "output_format", "ATTACK_CODES", "KINDS", "MAX_ATTACK_SHARE",
           "DEFAULT_WALKERS", "DEFAULT_PROOFS", "DEFAULT_SEED", "DEFAULT_LEVEL", "DEFAULT_CENTER",
           "DEFAULT_RADIUS_M", "DEFAULT_ATTACK_SHARE", "DEFAULT_START_TIME"]

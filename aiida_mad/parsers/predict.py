"""Parser of ``mad.predict``: the arrays of ``predictions.npz`` as ``ArrayData`` keyed by structure uuid.

The arrays file is retrieved temporarily (it can be large; its content goes into the output nodes), the log, the
standard error and ``predict-info.json`` permanently. Exit status 2 of ``aiida-mad-predict`` means refused input (its
reason is on standard error); any other failure is reported with the last line of the standard error. With
descriptors, the ``predictions`` attribute ``descriptors`` records their kind (per model and common), dimension and
reduction (from ``predict-info.json``).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_mad.calculations.predict import (
    COMMITTEE_ARRAYS,
    COMMITTEE_DOS_ARRAYS,
    DOS_ARRAYS,
    INFO_FILE,
    OUTPUT_FILE,
    PREDICTION_ARRAYS,
    STDERR_FILE,
    models_order,
)

__all__ = ('PredictParser',)

UNITS = {
    'energy': 'eV',
    'energy_per_atom': 'eV/atom',
    'forces': 'eV/Å',
    'stress': 'eV/Å³',
    'energy_per_atom_mean': 'eV/atom',
    'energy_per_atom_std': 'eV/atom',
    'forces_mean': 'eV/Å',
    'stress_mean': 'eV/Å³ (Voigt xx yy zz yz xz xy)',
    'force_std_max': 'eV/Å',
    'stress_std_max': 'eV/Å³',
    'dos': 'states/eV',
    'dos_energies': 'eV (relative to the Fermi energy)',
    'dos_mean': 'states/eV',
    'dos_std': 'states/eV',
    'descriptors': 'the units of the model features (mean over atoms)',
}


class PredictParser(Parser):
    """Parse the retrieved files of a ``mad.predict`` calculation."""

    def parse(self, **kwargs):
        """Attach ``predictions``, ``committee`` (two models or more) and ``results``."""
        names = set(self.retrieved.base.repository.list_object_names())
        stderr = (
            self.retrieved.base.repository.get_object_content(STDERR_FILE, mode='r') if STDERR_FILE in names else ''
        )
        temporary = kwargs.get('retrieved_temporary_folder')
        path = pathlib.Path(temporary) / OUTPUT_FILE if temporary else None
        if path is None or not path.is_file():
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            if lines and lines[-1].startswith('aiida-mad-predict: '):
                return self.exit_codes.ERROR_INVALID_INPUT.format(message=lines[-1].split(': ', 1)[1])
            if lines:
                return self.exit_codes.ERROR_PREDICTION_FAILED.format(message=lines[-1])
            return self.exit_codes.ERROR_MISSING_OUTPUT_FILES.format(files=OUTPUT_FILE)
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        models = models_order(self.node)
        predictions = orm.ArrayData()
        stored = [name for name in (*PREDICTION_ARRAYS, *DOS_ARRAYS) if name in arrays]
        for name in stored:
            predictions.set_array(name, arrays[name])
        attributes = {
            'models': models,
            'targets': [target for target in ('energy', 'dos') if target in arrays],
            'units': {name: UNITS[name] for name in stored if name in UNITS},
        }
        info = {}
        if INFO_FILE in names:
            info = json.loads(self.retrieved.base.repository.get_object_content(INFO_FILE, mode='r'))
        if 'descriptors' in arrays:
            kinds = [entry.get('descriptors') for entry in info.get('models', [])]
            attributes['descriptors'] = {
                'kind': kinds[0] if len(set(kinds)) == 1 else 'mixed',
                'kinds': kinds,
                'dimension': int(arrays['descriptors'].shape[2]),
                'reduction': 'mean over atoms',
            }
        references = {
            self.node.inputs.models[key].base.attributes.get('energy_reference', None)
            for key in self.node.inputs.models
        }
        attributes['energy_reference'] = references.pop() if len(references) == 1 else None
        predictions.base.attributes.set_many(attributes)
        self.out('predictions', predictions)
        if len(models) >= 2:
            committee = orm.ArrayData()
            statistics = [name for name in (*COMMITTEE_ARRAYS, *COMMITTEE_DOS_ARRAYS) if name in arrays]
            for name in ('uuids', 'offsets', *statistics):
                committee.set_array(name, arrays[name])
            shared = {key: value for key, value in attributes.items() if key != 'descriptors'}
            committee.base.attributes.set_many(
                {**shared, 'units': {name: UNITS[name] for name in statistics}, 'std': 'population (ddof 0)'}
            )
            self.out('committee', committee)
        if 'rotation_uuids' in arrays:
            rotations = orm.ArrayData()
            for name in sorted(name for name in arrays if name.startswith('rotation_')):
                rotations.set_array(name, arrays[name])
            rotations.base.attributes.set_many({'models': models, 'std': 'population (ddof 0)'})
            self.out('rotations', rotations)
        self.out('results', orm.Dict({**info, 'model_uuids': models}))
        return ExitCode(0)

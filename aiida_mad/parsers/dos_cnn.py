"""Parser of ``mad.dos_cnn``: one ``mad.dos_cnn_model`` per target, the predictions, the denoised DOS, the record.

The model files and the arrays are retrieved temporarily (their content goes into the output nodes), the log, the
standard error and ``dos-cnn-info.json`` permanently. Exit status 2 of ``aiida-mad-dos-cnn`` means refused input (its
reason is on standard error); any other failure is reported with the last line of the standard error.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_mad.calculations.dos_cnn import INFO_FILE, OUTPUT_FILE, STDERR_FILE, get_parameters, predicted_models
from aiida_mad.data.dos_cnn import DosCnnModelData

__all__ = ('DosCnnParser',)


class DosCnnParser(Parser):
    """Parse the retrieved files of a ``mad.dos_cnn`` calculation."""

    def parse(self, **kwargs):
        """Attach ``models``, ``predictions``, ``denoised`` (with a Fermi-level CNN) and ``results``."""
        names = set(self.retrieved.base.repository.list_object_names())
        stderr = (
            self.retrieved.base.repository.get_object_content(STDERR_FILE, mode='r') if STDERR_FILE in names else ''
        )
        temporary = kwargs.get('retrieved_temporary_folder')
        folder = pathlib.Path(temporary) if temporary else None
        inputs = self.node.inputs
        parameters = get_parameters(inputs.parameters.get_dict() if 'parameters' in inputs else None)
        expected = [OUTPUT_FILE, *(f'{target}.pt' for target in parameters['targets'])]
        missing = [name for name in expected if folder is None or not (folder / name).is_file()]
        if missing or INFO_FILE not in names:
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            if lines and lines[-1].startswith('aiida-mad-dos-cnn: '):
                return self.exit_codes.ERROR_INVALID_INPUT.format(message=lines[-1].split(': ', 1)[1])
            if lines:
                return self.exit_codes.ERROR_TRAINING_FAILED.format(message=lines[-1])
            return self.exit_codes.ERROR_MISSING_OUTPUT_FILES.format(files=', '.join(missing or [INFO_FILE]))
        info = json.loads(self.retrieved.base.repository.get_object_content(INFO_FILE, mode='r'))
        with np.load(folder / OUTPUT_FILE, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}

        dataset = inputs.dataset
        if 'dos_model' in inputs:
            dos_model = inputs.dos_model.uuid
        else:
            models = predicted_models(inputs.dos)
            dos_model = models[0] if len(models) == 1 else None
        record = {
            'architecture': 'dos-cnn',
            'unit': 'eV',
            'n_points': int(info['n_points']),
            'input': 'predicted DOS per atom (states/eV/atom) on the grid of the DOS model',
            'dos_uuid': inputs.dos.uuid,
            'dos_model_uuid': dos_model,
            'dataset_uuid': dataset.uuid,
            'dataset_name': dataset.name,
            'fingerprint': dataset.base.attributes.get('fingerprint'),
            'settings': {key: parameters[key] for key in ('learning_rate', 'warmup_epochs', 'patience', 'batch_size')},
            'seed': parameters['seed'],
        }
        results = {'n_structures': info['n_structures'], 'targets': {}, 'seconds': info['seconds']}
        for target in parameters['targets']:
            summary = info['targets'][target]
            model = DosCnnModelData(file=folder / f'{target}.pt', filename=f'{target}.pt')
            model.base.attributes.set_many(
                {
                    **record,
                    'target': target,
                    'relu_at_inference': target == 'gap',
                    **{key: summary[key] for key in ('epochs', 'best_epoch', 'stopped_early', 'n_parameters')},
                    'errors': summary['errors'],
                }
            )
            self.out(f'models.{target}', model)
            results['targets'][target] = {key: value for key, value in summary.items() if key != 'history'}

        predictions = orm.ArrayData()
        for name in ('uuids', 'split', *(f'{t}_{kind}' for t in parameters['targets'] for kind in ('dft', 'cnn'))):
            predictions.set_array(name, arrays[name])
        predictions.base.attributes.set('units', 'eV')
        self.out('predictions', predictions)
        if 'denoised' in arrays:
            denoised = orm.ArrayData()
            for name in ('uuids', 'energies', 'denoised', 'n_electrons'):
                denoised.set_array(name, arrays[name])
            denoised.base.attributes.set_many({'units': 'states/eV per cell', **info['denoised']})
            results['denoised'] = info['denoised']
            self.out('denoised', denoised)
        self.out('results', orm.Dict(results))
        return ExitCode(0)

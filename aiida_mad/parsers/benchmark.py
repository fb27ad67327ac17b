"""Parser of ``mad.benchmark``: the result file of ``aiida-mad-benchmark`` as one ``Dict``.

Exit status 2 of ``aiida-mad-benchmark`` means refused input (its reason is on standard error); any other failure is
reported with the last line of the standard error.
"""

from __future__ import annotations

import json

from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_mad.calculations.benchmark import OUTPUT_FILE, STDERR_FILE

__all__ = ('BenchmarkParser',)


class BenchmarkParser(Parser):
    """Parse the retrieved files of a ``mad.benchmark`` calculation."""

    def parse(self, **kwargs):
        """Attach ``results``: the benchmark's items and summary, with the model's uuid."""
        names = set(self.retrieved.base.repository.list_object_names())
        if OUTPUT_FILE not in names:
            stderr = (
                self.retrieved.base.repository.get_object_content(STDERR_FILE, mode='r') if STDERR_FILE in names else ''
            )
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            if lines and lines[-1].startswith('aiida-mad-benchmark: '):
                return self.exit_codes.ERROR_INVALID_INPUT.format(message=lines[-1].split(': ', 1)[1])
            if lines:
                return self.exit_codes.ERROR_BENCHMARK_FAILED.format(message=lines[-1])
            return self.exit_codes.ERROR_MISSING_OUTPUT_FILES.format(files=OUTPUT_FILE)
        result = json.loads(self.retrieved.base.repository.get_object_content(OUTPUT_FILE, mode='r'))
        result['model_uuid'] = self.node.inputs.model.uuid
        self.out('results', orm.Dict(result))
        return ExitCode(0)

"""Command line interface ``aiida-mad``."""

from .al import cmd_al
from .benchmarks import cmd_model_dimers, cmd_model_ev_scan, cmd_model_md_stability
from .dataset import cmd_dataset
from .demo import cmd_demo
from .dft import cmd_dft
from .dos_cnn import cmd_model_dos_cnn
from .evaluate import cmd_model_evaluate
from .mace import cmd_model_predict, cmd_train_committee, cmd_train_mace
from .model import cmd_model
from .query import cmd_query
from .root import cmd_root
from .setup import cmd_setup
from .structures import cmd_structures
from .train import cmd_train

cmd_root.add_command(cmd_al)
cmd_root.add_command(cmd_dataset)
cmd_root.add_command(cmd_demo)
cmd_root.add_command(cmd_dft)
cmd_root.add_command(cmd_model)
cmd_root.add_command(cmd_query)
cmd_root.add_command(cmd_setup)
cmd_root.add_command(cmd_structures)
cmd_root.add_command(cmd_train)
cmd_train.add_command(cmd_train_mace)
cmd_train.add_command(cmd_train_committee)
cmd_model.add_command(cmd_model_predict)
cmd_model.add_command(cmd_model_dimers)
cmd_model.add_command(cmd_model_ev_scan)
cmd_model.add_command(cmd_model_md_stability)
cmd_model.add_command(cmd_model_dos_cnn)
cmd_model.add_command(cmd_model_evaluate)

__all__ = ('cmd_root',)

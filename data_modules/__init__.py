"""Shared LightningDataModules of the zoo. They import ``zoo.core`` at most, never a paper package;
the paper packages import the vocabularies and task definitions kept here (``residues``, ``icl_tasks``)."""

from data_modules.antibody import AntibodySequenceDataModule
from data_modules.bags import DigitBagsDataModule
from data_modules.base import EpochSampler, TensorSet, ZooDataModule, seeded_split
from data_modules.cifar import CIFARDataModule
from data_modules.complexes import ComplexDataModule
from data_modules.digits import DigitsDataModule
from data_modules.icl_tasks import ICLTaskDataModule
from data_modules.image import ImageDataModule
from data_modules.instructions import InstructionDataModule
from data_modules.memories import MemoryDataModule
from data_modules.mnist import MNISTDataModule, read_idx
from data_modules.seq2seq import Seq2SeqDataModule
from data_modules.subspace import SubspaceDataModule
from data_modules.synthetic import SyntheticDataModule
from data_modules.text import ByteTokenizer, TextDataModule
from data_modules.timeseries import TimeSeriesDataModule, WindowSet

__all__ = [
    "AntibodySequenceDataModule",
    "ByteTokenizer",
    "CIFARDataModule",
    "ComplexDataModule",
    "DigitBagsDataModule",
    "DigitsDataModule",
    "EpochSampler",
    "ICLTaskDataModule",
    "ImageDataModule",
    "InstructionDataModule",
    "MNISTDataModule",
    "MemoryDataModule",
    "Seq2SeqDataModule",
    "SubspaceDataModule",
    "SyntheticDataModule",
    "TensorSet",
    "TextDataModule",
    "TimeSeriesDataModule",
    "WindowSet",
    "ZooDataModule",
    "read_idx",
    "seeded_split",
]

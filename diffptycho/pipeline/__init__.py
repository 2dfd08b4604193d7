"""The staged pipeline: from an experiment's CXI files to composition volumes.

ptychography per scan (probe retrieval) → projections (OD, phase; vacuum normalised) →
registration across energies → rotation-axis alignment → tomography per energy → chemistry.

It sits above every other layer (it reads files, runs solvers of :mod:`diffptycho.recon`,
post-processes with :mod:`diffptycho.analysis`). Each stage is a function
``(context, settings) → StageOutput`` (:mod:`.stages`); :func:`run_pipeline` runs a
:class:`PipelineConfig` (from the command line or a TOML file, :func:`load_config`) and saves
every stage in one results file, so a run restarts from any stage.

Examples:
    >>> from diffptycho.pipeline import PipelineConfig, TomographySettings
    >>> config = PipelineConfig(input=("scans.cxi",), output="out.h5",
    ...                         tomography=TomographySettings(iterations=30))
    >>> config.tomography.algorithm
    'art'
"""

from diffptycho.pipeline.config import (
    AlignmentSettings as AlignmentSettings,
)
from diffptycho.pipeline.config import (
    ChemistrySettings as ChemistrySettings,
)
from diffptycho.pipeline.config import (
    ConfigError as ConfigError,
)
from diffptycho.pipeline.config import (
    JointSettings as JointSettings,
)
from diffptycho.pipeline.config import (
    PipelineConfig as PipelineConfig,
)
from diffptycho.pipeline.config import (
    ProjectionSettings as ProjectionSettings,
)
from diffptycho.pipeline.config import (
    PtychographySettings as PtychographySettings,
)
from diffptycho.pipeline.config import (
    RegistrationSettings as RegistrationSettings,
)
from diffptycho.pipeline.config import (
    TiltSeriesSettings as TiltSeriesSettings,
)
from diffptycho.pipeline.config import (
    TomographySettings as TomographySettings,
)
from diffptycho.pipeline.config import (
    config_from_dict as config_from_dict,
)
from diffptycho.pipeline.config import (
    load_config as load_config,
)
from diffptycho.pipeline.runner import PipelineResult as PipelineResult
from diffptycho.pipeline.runner import run_pipeline as run_pipeline
from diffptycho.pipeline.stages import STAGES as STAGES
from diffptycho.pipeline.stages import Context as Context
from diffptycho.pipeline.stages import Stage as Stage
from diffptycho.pipeline.stages import StageOutput as StageOutput

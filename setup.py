"""switch_mtf: the Switch Transformer on Mesh TensorFlow."""
import setuptools

# The pinned stack (see README "Installation"): TensorFlow 2.15.1 is the last
# release with tf.estimator, which the upstream TPU path needs.  These versions
# are verified to install together; constraints.txt pins everything else.
INSTALL_REQUIRES = [
    "tensorflow==2.15.1",
    "tensorflow-text==2.15.0",
    "mesh-tensorflow==0.1.21",
    "t5==0.9.4",
    "seqio-nightly==0.0.18.dev20250227",
    # seqio-nightly also pulls tfds-nightly (2023), which writes the same
    # module: bin/ensure-env.sh then leaves this one alone (see there).
    "tensorflow-datasets==4.9.10",
    "gin-config==0.5.0",
    "sentencepiece==0.2.0",
    # Python 3.11 has no compiled protobuf 3.20 wheel and the pure-Python one
    # serializes graphs ~40x slower (a training start took 111 s instead of
    # 40 s); protobuf 4.25 (upb) needs tensorflow-metadata 1.15 there.
    'tensorflow-metadata==1.14.0; python_version < "3.11"',
    'tensorflow-metadata==1.15.0; python_version >= "3.11"',
    'protobuf==3.20.3; python_version < "3.11"',
    'protobuf==4.25.5; python_version >= "3.11"',
    "numpy<2",
    "setuptools<82",
    "jax[cpu]==0.4.30",
    # demo and reproduce draw their plots with it.
    "matplotlib",
]

import os  # noqa: E402

from setuptools.command import build_py  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# Put at the top of site-packages, it installs switch_mtf's import hook
# (switch_mtf/compat/) at every interpreter start of the environment, so
# that any program importing Mesh TF (T5's t5_mesh_transformer too) gets
# the compatibility fixes.  Guarded: harmless once switch_mtf is removed.
PTH_NAME = "switch_mtf_compat.pth"
PTH_LINE = ("import importlib.util; importlib.util.find_spec('switch_mtf') "
            "and __import__('switch_mtf')\n")


class BuildPy(build_py.build_py):
  """Also puts the gin tree into the package (switch_mtf/gin, for
  non-editable installs) and the .pth file at the top of the wheel."""

  def run(self):
    super().run()
    target = os.path.join(self.build_lib, "switch_mtf", "gin")
    self.copy_tree(os.path.join(HERE, "gin"), target)
    with open(os.path.join(self.build_lib, PTH_NAME), "w") as f:
      f.write(PTH_LINE)


setuptools.setup(
    name="switch_mtf",
    cmdclass={"build_py": BuildPy},
    version="0.1.0",
    description="Switch Transformer (Fedus, Zoph & Shazeer 2021) on Mesh "
                "TensorFlow",
    # tasks/ is installed as switch_mtf.tasks (switch_mtf/tasks links to it),
    # not as a generic top-level package "tasks".
    packages=setuptools.find_packages(include=["switch_mtf", "switch_mtf.*"]),
    python_requires=">=3.10,<3.12",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # Reading PyTorch pickles (pytorch_model.bin) in `switch-mtf convert`;
        # safetensors convert without it.  2.13.0 has a CPU-only build.
        "convert": ["torch==2.13.0"],
        # The conversion tests compare against Hugging Face's model in torch;
        # bin/test spreads the test files over processes with pytest-xdist.
        "test": ["pytest", "pytest-xdist", "torch==2.13.0"],
        # GPU machines: TensorFlow's CUDA build and NVIDIA's libraries
        # (bin/ takes it with SWITCH_MTF_TENSORFLOW=gpu; without it bin/
        # installs tensorflow-cpu, see bin/ensure-env.sh).
        "gpu": ["tensorflow[and-cuda]==2.15.1"],
    },
    entry_points={"console_scripts": ["switch-mtf=switch_mtf.cli:main"]},
)

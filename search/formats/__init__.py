"""Export formats, one module each, behind one registry: ``rkd-search export --format NAME``.

A format is a name, one line of ``--help``, and ``write(job)``: it writes its files into
``job.folder`` (all of an export is written in a temporary folder and moved in place at the end),
and records in ``job`` what it wrote (``files``), measured (``accuracy``), adds to ``student.json``
(``summary``) and logs on the run (``metrics``). ``quantizes``: it honours ``--int8`` and
``--raw-input``; ``needs_data(int8)``: it needs the search's dataset (calibration images, the test
images its models are checked on); ``check()`` refuses, in one line, a format that cannot run here.
A new format is one module that calls ``register_format``, plus its test; the command line and
``export`` read the registry. The built-in formats are written in the order they are registered:
``onnx``, ``torchscript``, ``litert``.
"""

from ._registry import FORMATS, ExportFormat, ExportJob, chosen_formats, describe_formats, register_format, unregister_format
from . import onnx, torchscript, litert  # noqa: E402, F401, I001  (they register themselves, in this order)

__all__ = ["FORMATS", "ExportFormat", "ExportJob", "chosen_formats", "describe_formats", "register_format", "unregister_format"]

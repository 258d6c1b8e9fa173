"""Runtime around the models: training, evaluation, export (the entry points).

Importing it checks for another top-level `official` package in the
environment (TensorFlow Model Garden's; official/package_check.py).
"""

SPINENET_KERAS = True  # package_check.MARKER: this `official` is ours.

from official import package_check  # pylint: disable=g-import-not-at-top,wrong-import-position

package_check.note_foreign_packages()

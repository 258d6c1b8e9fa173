"""Former name of official/export_agreement.py, which now measures ONNX exports too.

`python -m official.tflite_agreement ...` runs official.export_agreement
with the same flags (--tflite is an alias of its --exports).
"""

from official import export_agreement

compare = export_agreement.compare

if __name__ == "__main__":
  export_agreement.run()

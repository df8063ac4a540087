"""``fornet-deploy predict``: segment images, folders and videos with any artefact of a bundle.

For every image ``NAME`` it writes, into the output folder:

- ``NAME_trainIds.png``: the prediction, uint8 train ids 0..18 at the image's size;
- ``NAME_labelIds.png`` (``label_ids``): the same as Cityscapes label ids (benchmark submission);
- ``NAME_color.png``: the train ids in the Cityscapes palette;
- ``NAME_overlay.png``: the image blended with that colour map, over a legend of the classes
  it shows (names and colours of the bundle's label set);
- ``NAME_importance.png`` (``importance``): the 1/8-scale importance map, upsampled
  bilinearly, as a heat map over the image, over its colour bar (0 to 1);
- ``NAME_topk.png`` (``mask``): the image dimmed outside the Top-K mask, selected regions
  tinted and outlined: what FoR-Net chose to focus on.

A video ``NAME`` gives ``NAME_overlay.mp4`` (plus ``NAME_importance.mp4`` / ``NAME_topk.mp4``),
at the source frame rate divided by ``video_every``, its frames at the video's size (no legend
or colour bar). Per-frame label maps
(``NAME_frames/NAME_000123_trainIds.png`` and ``_labelIds.png``, numbered by source frame)
are written only with ``label_ids``: a minute of video is ~1800 PNG files, and on a GPU
their encoding would cost more than the inference. A finished video is opened again and
its frames counted: a write that failed (disk full, a file-size limit) is an error, never
an unplayable file reported as success.

Live sources: an input that is not an existing path and is a number (a camera index,
``0``), a URL (``rtsp://``, ``http://``...) or a GStreamer pipeline (it holds ``!``) is
read with OpenCV like a video without an end, into ``camera0_*``, ``HOST_PORT_PATH_*`` or
``pipeline_*``. It runs until ``max_frames`` frames were processed, the source ends, or
Ctrl-C / SIGTERM: the frame in progress is finished, the videos are finalised and the run
goes on to its next input and completes normally (exit code 0) -- stopping is the normal
way to end a live source. A second Ctrl-C abandons the whole run (exit code 130, nothing
written), as Ctrl-C does at any other moment of a run.

``NAME`` is the file's stem; files found in a folder keep their path below the folder's
parent (``predict data/`` writes ``data/a/x_*`` and ``data/b/x_*``; ``predict ..`` names
the folder ``..`` is), so same-named files in different folders do not collide and nothing
is written outside the output folder. ``predictions.json`` lists every file written.

A run writes all or nothing. Every input is decoded (images) or opened (videos, live
sources) before anything is written; outputs go to a hidden staging folder inside the
output folder and are moved into place only once the whole run has succeeded, by a commit
whose guarantee is: **whenever ``predictions.json`` is present, the files it lists are
exactly those of the run it describes, all in place with that run's content, and the files
an earlier run listed that this one does not are gone.** The commit (:mod:`fornet_deploy.staging`,
the writer the bundle uses too) writes a journal into the staging folder -- the new files,
and the earlier run's files that the new run does not rewrite -- renames the folder to
``.predict-commit-*`` (the decision), removes the old report, moves the new files into
place, deletes those earlier files and renames the new report into place last. It moves
and deletes only through real folders inside the output folder: a run whose outputs would
land behind a symbolic link is refused before the commit (one line, the folder as it was),
and a listed file behind a link, or a link itself, is never deleted. A run that fails or is interrupted (Ctrl-C,
SIGTERM, an error) before the commit leaves the folder as it was; Ctrl-C or SIGTERM
during the commit waits for it (the run completes); a ``kill -9`` during the commit
leaves the folder without ``predictions.json`` -- it then claims no complete run -- and
the next ``predict`` into it completes that commit first. One ``predict`` at a time
writes into a folder (a lock; a second one is a one-line error). Files that the new run
does not write and no earlier report lists (the user's own) are never touched.

Modules: :mod:`.sources` (inputs collected, opened and checked), :mod:`.segmenter` (the
:class:`Segmenter`), :mod:`.outputs` (the staging folder, its commit, checked videos) and
:mod:`.run` (:class:`PredictConfig`, :func:`predict`, pictures and the summary).
"""

from .outputs import REPORT_NAME
from .run import DEFAULT_FPS, PredictConfig, Progress, predict
from .segmenter import ALL_OUTPUTS_OPTION, Prediction, Segmenter
from .sources import STREAM_TIMEOUT_MS, InputItem, collect_inputs, is_live_source

__all__ = ["ALL_OUTPUTS_OPTION", "DEFAULT_FPS", "REPORT_NAME", "STREAM_TIMEOUT_MS", "InputItem", "PredictConfig",
           "Prediction", "Progress", "Segmenter", "collect_inputs", "is_live_source", "predict"]

"""Draw docs/coordinates.png, the coordinate convention of docs/data.md.

    PYTHONPATH=. python docs/make_coordinates_figure.py

Uses ptycho_fast.coords itself, so the picture shows what the code does.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ptycho_fast import coords  # noqa: E402

H, W, N = 14, 20, 8
centre = np.array([7.0, 11.0])                      # (row y, col x) = (ycoords, xcoords)
top_left = coords.centres_to_top_left(centre, N)    # (3, 7)

fig, ax = plt.subplots(figsize=(8.6, 6.4))
ax.imshow(np.zeros((H, W)), cmap="Greys", vmin=0, vmax=1, extent=(-0.5, W - 0.5, H - 0.5, -0.5))
for r in range(H + 1):
    ax.axhline(r - 0.5, color="0.8", lw=0.6)
for c in range(W + 1):
    ax.axvline(c - 0.5, color="0.8", lw=0.6)
ax.add_patch(Rectangle((top_left[1] - 0.5, top_left[0] - 0.5), N, N, fill=True, alpha=0.15,
                       color="tab:blue", lw=0))
ax.add_patch(Rectangle((top_left[1] - 0.5, top_left[0] - 0.5), N, N, fill=False, color="tab:blue", lw=2))
ax.add_patch(Rectangle((top_left[1] - 0.5, top_left[0] - 0.5), 1, 1, color="tab:green", alpha=0.8))
ax.add_patch(Rectangle((centre[1] - 0.5, centre[0] - 0.5), 1, 1, color="tab:red", alpha=0.8))
ax.add_patch(Rectangle((-0.5, -0.5), 1, 1, color="0.4"))
BOX = dict(boxstyle="round,pad=0.3", fc="white", ec="none", alpha=0.9)
ax.annotate("object[0, 0]", (0, 0), (1.4, 0.4), fontsize=9, arrowprops=dict(arrowstyle="->"), bbox=BOX)
ax.annotate(f"top-left (y - N/2, x - N/2) = ({top_left[0]:.0f}, {top_left[1]:.0f})\n"
            "what ops.extract_patches takes\n= patch[0, 0]", (top_left[1], top_left[0]),
            (0.3, 2.2), fontsize=9, color="tab:green", bbox=BOX, arrowprops=dict(arrowstyle="->", color="tab:green"))
ax.annotate(f"probe centre (y, x) = ({centre[0]:.0f}, {centre[1]:.0f})\n"
            f"ycoords = {centre[0]:.0f} (row), xcoords = {centre[1]:.0f} (column)\n"
            "object[y, x] = patch[N/2, N/2]", (centre[1], centre[0]), (13.0, 1.6), fontsize=9,
            color="tab:red", bbox=BOX, arrowprops=dict(arrowstyle="->", color="tab:red"))
ax.text(top_left[1] + N / 2 - 0.5, top_left[0] + N + 0.2, f"patch N x N (N = {N})", ha="center",
        va="top", color="tab:blue", fontsize=9, bbox=BOX)
ax.set_xticks(range(W))
ax.set_yticks(range(H))
ax.tick_params(labelsize=7, top=True, labeltop=True, bottom=False, labelbottom=False)
ax.set_xlabel("column  x  (xcoords)  →", fontsize=10)
ax.xaxis.set_label_position("top")
ax.set_ylabel("row  y  (ycoords)  ↓", fontsize=10)
ax.set_title("Scan positions are probe centres in object pixels (positions array = (row, col))",
             fontsize=10, pad=34)
fig.tight_layout()
out = Path(__file__).with_name("coordinates.png")
fig.savefig(out, dpi=90)
print(f"wrote {out}")

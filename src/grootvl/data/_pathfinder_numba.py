"""numba kernels behind :func:`grootvl.data.pathfinder`: grow non-touching curves, draw them.

Scene. Four arms leave the corners of a small square, each heading outwards along the
square's diagonal, and wander as random curves: chains of equal steps whose heading turns by
a uniform random angle of at most ``max_turn`` per step. Two opposite sides of the square are
drawn, so the arms form two curves (each: arm, side, arm) that face each other across the
square without touching, like ``)(``. Distractor curves fill the rest. A marker goes on the
outer ends of two neighbouring arms: of the same curve (label 1) or of the two curves
(label 0). Which sides are drawn is random and the four arms are grown alike, in random
order, so everything except the drawn sides, in particular marker distance, the curve
direction at each marker and the ink, has one distribution for both labels: the label is
only readable by following the arms from the markers to the square.

Pixels. While curves grow, an ownership grid records which curve lit each pixel and where
along that curve (a position index). A step is refused if a pixel it would light lies within
``margin`` pixels (Chebyshev) of a pixel of another curve, or of a part of the same curve
more than ``recent`` positions away. So different curves never touch, not even diagonally,
and a curve never touches itself: the 8-connected components of an image are its curves.

Every image draws its random numbers from its own stream, seeded from (seed, image index):
an image does not depend on how many images are generated with it or in which order.
"""
from __future__ import annotations

import numba as nb
import numpy as np

OK = 0
FAILED = 1  # no scene fitted within the attempt limit: the difficulty asks for too much


@nb.njit(cache=True)
def _mix(a, b):
    """splitmix64 of two integers, reduced to a numpy seed (< 2**32)."""
    z = (np.uint64(a) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(b)
         + np.uint64(0x632BE59BD9B4E019))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.int64(z >> np.uint64(32))


@nb.njit(cache=True)
def pair_labels(seed, start, num):
    """Labels of images start..start+num-1: each aligned pair (2j, 2j+1) holds one 0 and one 1,
    in an order drawn from (seed, j)."""
    labels = np.empty(num, np.int64)
    for n in range(num):
        i = start + n
        flip = _mix(np.int64(seed) * 2 + 1, i // 2) & 1
        labels[n] = (i + flip) & 1
    return labels


@nb.njit(cache=True)
def _segment_pixels(x0, y0, x1, y1, radius, size, out):
    """Pixels whose centre lies within ``radius`` of segment (x0,y0)-(x1,y1) (a capsule);
    writes flat indices into ``out`` and returns how many, or -1 if one falls off the image."""
    lo_x = int(np.floor(min(x0, x1) - radius - 0.5))
    hi_x = int(np.ceil(max(x0, x1) + radius - 0.5))
    lo_y = int(np.floor(min(y0, y1) - radius - 0.5))
    hi_y = int(np.ceil(max(y0, y1) + radius - 0.5))
    dx = x1 - x0
    dy = y1 - y0
    length2 = dx * dx + dy * dy
    r2 = radius * radius + 1e-9
    count = 0
    for py in range(lo_y, hi_y + 1):
        for px in range(lo_x, hi_x + 1):
            cx = px + 0.5
            cy = py + 0.5
            t = 0.0
            if length2 > 0.0:
                t = ((cx - x0) * dx + (cy - y0) * dy) / length2
                t = min(1.0, max(0.0, t))
            ex = x0 + t * dx - cx
            ey = y0 + t * dy - cy
            if ex * ex + ey * ey <= r2:
                if px < 0 or py < 0 or px >= size or py >= size:
                    return -1
                out[count] = py * size + px
                count += 1
    return count


@nb.njit(cache=True)
def _square_pixels(x, y, side, size, out):
    """The ``side`` x ``side`` square of pixels centred on (x, y); -1 if it leaves the image."""
    lo_x = int(np.floor(x - side / 2.0 + 0.5))
    lo_y = int(np.floor(y - side / 2.0 + 0.5))
    count = 0
    for py in range(lo_y, lo_y + side):
        for px in range(lo_x, lo_x + side):
            if px < 0 or py < 0 or px >= size or py >= size:
                return -1
            out[count] = py * size + px
            count += 1
    return count


@nb.njit(cache=True)
def _fits(pix, count, curve, pos, owner, owner_pos, size, margin, recent):
    """True if no pixel within ``margin`` of ``pix`` belongs to another curve or to a part of
    ``curve`` more than ``recent`` positions from ``pos``; pixels near the border fail."""
    for n in range(count):
        py = pix[n] // size
        px = pix[n] % size
        if px < margin or py < margin or px >= size - margin or py >= size - margin:
            return False
        for qy in range(py - margin, py + margin + 1):
            for qx in range(px - margin, px + margin + 1):
                q = qy * size + qx
                o = owner[q]
                if o >= 0 and (o != curve or abs(owner_pos[q] - pos) > recent):
                    return False
    return True


@nb.njit(cache=True)
def _claim(pix, count, curve, pos, owner, owner_pos, log, log_len):
    """Give ``pix`` to (curve, pos), remembering old values in ``log`` for ``_undo``."""
    for n in range(count):
        q = pix[n]
        log[log_len, 0] = q
        log[log_len, 1] = owner[q]
        log[log_len, 2] = owner_pos[q]
        log_len += 1
        owner[q] = curve
        owner_pos[q] = pos
    return log_len


@nb.njit(cache=True)
def _undo(owner, owner_pos, log, log_len, keep):
    """Restore the grid to how it was when the log held ``keep`` entries."""
    for n in range(log_len - 1, keep - 1, -1):
        q = log[n, 0]
        owner[q] = log[n, 1]
        owner_pos[q] = log[n, 2]


@nb.njit(cache=True)
def _grow(curve, pts, steps, heading, pos0, dpos, seg_len, max_turn, radius, owner, owner_pos,
          size, margin, recent, log, pix, tries):
    """Grow ``steps`` steps of ``curve`` from pts[0] (positions pos0 + dpos * step), each step
    turning by a random angle. Returns how many log entries the claimed pixels took (>= 0),
    or -1 with the grid unchanged if some step found no free direction."""
    log_len = 0
    for s in range(1, steps + 1):
        placed = False
        for _ in range(tries):
            h = heading + (2.0 * np.random.random() - 1.0) * max_turn
            x0 = pts[s - 1, 0]
            y0 = pts[s - 1, 1]
            x1 = x0 + seg_len * np.cos(h)
            y1 = y0 + seg_len * np.sin(h)
            count = _segment_pixels(x0, y0, x1, y1, radius, size, pix)
            pos = pos0 + dpos * s
            if count < 0 or not _fits(pix, count, curve, pos, owner, owner_pos, size, margin,
                                      recent):
                continue
            log_len = _claim(pix, count, curve, pos, owner, owner_pos, log, log_len)
            pts[s, 0] = x1
            pts[s, 1] = y1
            heading = h
            placed = True
            break
        if not placed:
            _undo(owner, owner_pos, log, log_len, 0)
            return -1
    return log_len


@nb.njit(cache=True)
def _place(curve, pos, pix, count, owner, owner_pos, size, margin, recent, log):
    """Claim ``pix`` for (curve, pos) if it fits; True on success."""
    if count < 0 or not _fits(pix, count, curve, pos, owner, owner_pos, size, margin, recent):
        return False
    _claim(pix, count, curve, pos, owner, owner_pos, log, 0)
    return True


@nb.njit(cache=True)
def _free_curve(curve, pts, steps, seg_len, max_turn, radius, owner, owner_pos, size, margin,
                recent, log, pix, tries):
    """An unmarked curve from a random free start; False if none fitted in ``tries`` starts."""
    lo = margin + radius
    for _ in range(tries):
        pts[0, 0] = lo + np.random.random() * (size - 2 * lo)
        pts[0, 1] = lo + np.random.random() * (size - 2 * lo)
        heading = np.random.random() * 2.0 * np.pi
        count = _segment_pixels(pts[0, 0], pts[0, 1], pts[0, 0], pts[0, 1], radius, size, pix)
        if not _place(curve, 0, pix, count, owner, owner_pos, size, margin, recent, log):
            continue
        if _grow(curve, pts, steps, heading, 0, 1, seg_len, max_turn, radius, owner,
                 owner_pos, size, margin, recent, log, pix, tries) >= 0:
            return True
        # _grow restored its own steps; the start dot's pixels were free before (it fitted)
        count = _segment_pixels(pts[0, 0], pts[0, 1], pts[0, 0], pts[0, 1], radius, size, pix)
        for m in range(count):
            owner[pix[m]] = -1
    return False


@nb.njit(cache=True)
def _scene(pts, num_pts, arm_steps, distractors, distractor_steps, seg_len, max_turn, radius,
           marker_size, owner, owner_pos, size, margin, recent, log, pix, tries, tilt, frame):
    """One attempt at a scene (see the module docstring); True on success.

    pts[0..3] are the arms (pts[a, 0] on the square, pts[a, arm_steps] the outer end), pts[4]
    and pts[5] the two drawn sides, pts[6:] the distractors. Arms 0, 1 form curve 0 with
    side 0 and arms 2, 3 curve 1 with side 1; arm a neighbours arms a - 1 and a + 1 (mod 4).
    """
    owner[:] = -1
    owner_pos[:] = 0
    # the undrawn sides must keep the curves apart, also when the square stands diagonally
    side = np.sqrt(2.0) * (margin + 2.0 * radius + 1.0) + 0.5
    half = side / np.sqrt(2.0)  # centre to corner
    # quarter turn k (which pair of sides is drawn) plus a tilt; tilt = pi/4: any angle
    theta = (np.pi / 4.0 + int(np.random.random() * 4) * np.pi / 2.0
             + (2.0 * np.random.random() - 1.0) * tilt)
    # Centre the square where straight-ish arms and their markers have room: along each image
    # axis the arms reach about (half + 0.8 * arm length) times the largest |cos| of their
    # headings (curving arms reach less; an arm that still hits the border is regrown).
    spread = max(abs(np.cos(theta)), abs(np.sin(theta)))
    need = spread * (half + 0.8 * arm_steps * seg_len) + marker_size / 2.0 + margin + radius
    lo = min(size / 2.0, need)
    cx = lo + np.random.random() * (size - 2 * lo)
    cy = lo + np.random.random() * (size - 2 * lo)
    frame[0], frame[1], frame[2] = cx, cy, theta
    for a in range(4):
        angle = theta + a * np.pi / 2.0
        pts[a, 0, 0] = cx + half * np.cos(angle)
        pts[a, 0, 1] = cy + half * np.sin(angle)
    for c in range(2):  # sides: arm 2c's corner to arm 2c+1's corner, position 0 of curve c
        s = 4 + c
        pts[s, 0] = pts[2 * c, 0]
        pts[s, 1] = pts[2 * c + 1, 0]
        num_pts[s] = 2
        count = _segment_pixels(pts[s, 0, 0], pts[s, 0, 1], pts[s, 1, 0], pts[s, 1, 1], radius,
                                size, pix)
        if not _place(c, 0, pix, count, owner, owner_pos, size, margin, recent, log):
            return False
    order = np.random.permutation(4)
    for a in order:
        curve = a // 2
        dpos = -1 if a % 2 == 0 else 1  # positions run along the curve: arm, side, arm
        heading = theta + a * np.pi / 2.0
        # grow the arm and reserve a marker square at its outer end (any outer end may get a
        # marker); a few regrowths, then the scene is redrawn
        done = False
        for _ in range(4):
            log_len = _grow(curve, pts[a], arm_steps, heading, 0, dpos, seg_len, max_turn,
                            radius, owner, owner_pos, size, margin, recent, log, pix, tries)
            if log_len < 0:
                continue
            count = _square_pixels(pts[a, arm_steps, 0], pts[a, arm_steps, 1], marker_size,
                                   size, pix)
            if count >= 0 and _fits(pix, count, curve, dpos * (arm_steps + 1), owner,
                                    owner_pos, size, margin, recent):
                _claim(pix, count, curve, dpos * (arm_steps + 1), owner, owner_pos, log,
                       log_len)
                done = True
                break
            _undo(owner, owner_pos, log, log_len, 0)
        if not done:
            return False
        num_pts[a] = arm_steps + 1
    for d in range(distractors):
        if not _free_curve(2 + d, pts[6 + d], distractor_steps, seg_len, max_turn, radius,
                           owner, owner_pos, size, margin, recent, log, pix, tries):
            return False
        num_pts[6 + d] = distractor_steps + 1
    return True


@nb.njit(cache=True)
def _draw_segment(img, x0, y0, x1, y1, radius, value, size, pix):
    count = _segment_pixels(x0, y0, x1, y1, radius, size, pix)
    for m in range(count):
        img[pix[m]] = max(img[pix[m]], value)


@nb.njit(cache=True)
def _draw_polyline(img, pts, n, radius, dash_on, dash_off, value, size, pix):
    """Draw pts[:n] with round caps; dashed when dash_off > 0 (phase from the arc length)."""
    period = dash_on + dash_off
    arc = 0.0
    for s in range(1, n):
        x0 = pts[s - 1, 0]
        y0 = pts[s - 1, 1]
        dx = pts[s, 0] - x0
        dy = pts[s, 1] - y0
        length = np.hypot(dx, dy)
        if dash_off <= 0.0:
            _draw_segment(img, x0, y0, x0 + dx, y0 + dy, radius, value, size, pix)
        else:
            a = 0.0
            while a < length:
                phase = (arc + a) % period
                if phase < dash_on:
                    end = min(length, a + dash_on - phase)
                    _draw_segment(img, x0 + a / length * dx, y0 + a / length * dy,
                                  x0 + end / length * dx, y0 + end / length * dy, radius, value,
                                  size, pix)
                    a = end
                else:
                    a += period - phase
        arc += length


@nb.njit(cache=True)
def generate(images, labels, seed, start, arm_steps, distractors, distractor_steps, seg_len,
             max_turn, tilt, line_width, marker_size, margin, dash_on, dash_off, path_value,
             marker_value, min_gap, max_attempts, frames):
    """Fill ``images`` (N, size, size) uint8 with images start..start+N-1 of the stream of
    ``seed`` for the given labels; returns OK or FAILED. ``frames`` (N, 3) receives each
    scene's square centre (x, y) and the angle of arm 0 (radians, image axes)."""
    num, size = images.shape[0], images.shape[1]
    radius = max(0.5, line_width / 2.0)
    recent = int(np.ceil((line_width + 2 * margin + 2) / seg_len)) + 1
    tries = 16
    max_steps = max(arm_steps, distractor_steps)
    pts = np.zeros((6 + distractors, max_steps + 1, 2))
    num_pts = np.zeros(6 + distractors, np.int64)
    owner = np.empty(size * size, np.int32)
    owner_pos = np.empty(size * size, np.int32)
    box = int((max(seg_len, 1.5 * (margin + 2.0 * radius + 1.0) + 0.5) + 2 * radius + 3) ** 2) + 1
    pix = np.empty(max(box, marker_size * marker_size) + 8, np.int64)
    log = np.empty(((max_steps + 1) * pix.shape[0], 3), np.int64)
    flat = np.empty(size * size, np.uint8)
    for n in range(num):
        np.random.seed(_mix(seed, start + n))
        label = labels[n]
        done = False
        for _ in range(max_attempts):
            if not _scene(pts, num_pts, arm_steps, distractors, distractor_steps, seg_len,
                          max_turn, radius, marker_size, owner, owner_pos, size, margin,
                          recent, log, pix, tries, tilt, frames[n]):
                continue
            # neighbouring arms: a and a+1 share a curve for even a (label 1), not for odd a
            a = 2 * int(np.random.random() * 2) + (1 - label)
            b = (a + 1) % 4
            if np.random.random() < 0.5:
                a, b = b, a
            ax, ay = pts[a, arm_steps, 0], pts[a, arm_steps, 1]
            bx, by = pts[b, arm_steps, 0], pts[b, arm_steps, 1]
            if np.hypot(bx - ax, by - ay) >= min_gap:
                done = True
                break
        if not done:
            return FAILED
        flat[:] = 0
        for c in range(6 + distractors):
            _draw_polyline(flat, pts[c], num_pts[c], radius, dash_on, dash_off, path_value,
                           size, pix)
        for x, y in ((ax, ay), (bx, by)):
            count = _square_pixels(x, y, marker_size, size, pix)
            for j in range(count):
                flat[pix[j]] = marker_value
        images[n] = flat.reshape(size, size)
    return OK

"""ce-ray: collegial ensembles on Ray -- fit alpha, compute the primal and dual curves, sweep them.

Implements E. Littwin, B. Myara, S. Sabah, J. Susskind, S. Zhai and O. Golan, "Collegial
Ensembles", NeurIPS 2020 (arXiv:2006.07678). Equation, figure and table numbers in this
package refer to that paper.
"""

__version__ = "0.1.0"

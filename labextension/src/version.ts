/** The widget module name and version; they must match ivisit_nb/widgets/frontend.py. */
export const MODULE_NAME = 'ivisit-nb';
export const MODULE_VERSION = '0.1.0';

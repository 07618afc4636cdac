"""Corpus preparation for the fairseq-sage translation recipes.

Each module is usable as a library and as a command line tool
(``python -m data_prep.<module> --help``):

- :mod:`data_prep.download`  fetch a file with resume and sha256 verification
- :mod:`data_prep.archive`   extract named members of a .tgz archive
- :mod:`data_prep.iwslt`     text of IWSLT ``train.tags`` files and ``<seg>`` lines of XML files
- :mod:`data_prep.sgm`       text of WMT SGM files, as Moses' ``input-from-sgm.perl``
- :mod:`data_prep.moses`     Moses tokenisation, detokenisation and lowercasing (sacremoses)
- :mod:`data_prep.clean`     length and ratio filter of Moses' ``clean-corpus-n.perl``
- :mod:`data_prep.split`     train/valid split by line stride, as fairseq's prepare-iwslt14.sh
- :mod:`data_prep.subword`   joint BPE (subword-nmt) or sentencepiece, learn and apply
"""
